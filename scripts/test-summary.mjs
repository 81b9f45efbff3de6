// The closing lines of `npm test`, from the results directory scripts/test.sh fills:
// `<step>.json` (vitest's JSON report), `<step>.rc` (the step's exit code) and `<step>.out`
// (what it printed). It adds the reports up into `tests: N passed, N failed, N skipped`, and
// names every step that failed and why, also when no single test did: a failing
// beforeAll/afterAll hook fails its file, an unhandled error makes vitest exit 1, a benchmark
// group fails the bench step. Those are easy to miss in a long log; here they are the last lines.
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';

const dir = process.argv[2];
const steps = [...new Set(readdirSync(dir).map((f) => f.replace(/\.(json|rc|out)$/, '')))];
const plain = (s) => s.replace(/\x1b\[[0-9;]*m/g, '');

let passed = 0;
let failed = 0;
let skipped = 0;
const problems = [];
for (const step of steps) {
  const rcFile = join(dir, `${step}.rc`);
  const rc = existsSync(rcFile) ? Number(readFileSync(rcFile, 'utf8').trim()) : 0;
  const jsonFile = join(dir, `${step}.json`);
  let failedHere = 0;
  if (existsSync(jsonFile)) {
    let report;
    try {
      report = JSON.parse(readFileSync(jsonFile, 'utf8'));
    } catch {
      problems.push(`${step}: no readable report in ${jsonFile}`);
      failed += 1;
      continue;
    }
    passed += report.numPassedTests ?? 0;
    failedHere = report.numFailedTests ?? 0;
    skipped += (report.numPendingTests ?? 0) + (report.numTodoTests ?? 0);
    for (const file of report.testResults ?? []) {
      const bad = (file.assertionResults ?? []).filter((t) => t.status === 'failed');
      for (const t of bad) problems.push(`${step}: ${file.name}: ${t.fullName}`);
      // A file that failed without a failed test: a hook or the file's own code threw.
      if (file.status === 'failed' && bad.length === 0) {
        failedHere += 1;
        problems.push(`${step}: ${file.name}: ${file.message || 'failed outside any test (a hook?)'}`);
      }
    }
  } else if (step !== 'bench') {
    problems.push(`${step}: no report (the step did not finish)`);
    failedHere += 1;
  }
  const out = existsSync(join(dir, `${step}.out`)) ? plain(readFileSync(join(dir, `${step}.out`), 'utf8')) : '';
  if (rc !== 0 && failedHere === 0) {
    // vitest: "Vitest caught N unhandled error(s)"; bench: "bench: N group(s) failed: …".
    const lines = out.split('\n');
    const said = lines.filter((l) => /unhandled (error|rejection)|This error originated in|group\(s\) failed|FAILED/i.test(l));
    const first = lines.findIndex((l) => /Unhandled (Errors|Rejection)/.test(l));
    problems.push(`${step}: exited ${rc} with no failed test${said.length > 0 ? `: ${said.slice(0, 6).join(' | ').trim()}` : ''}`);
    if (first >= 0) problems.push(...lines.slice(first, first + 25).map((l) => `  ${step}| ${l}`));
    failedHere = 1;
  }
  failed += failedHere;
}
for (const p of problems) console.log(p);
console.log(`tests: ${passed} passed, ${failed} failed, ${skipped} skipped`);
