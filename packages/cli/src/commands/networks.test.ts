import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { NetworkServiceService, type Network, type NetworkServiceServer } from '@oarcloud/api';
import { FailedPreconditionError, GrpcServer, InvalidArgumentError, NotFoundError, nullLogger, withUnimplemented } from '@oarcloud/common';
import { EXIT } from '../exit-codes.js';
import { runCli } from '../program.js';
import { parseNetworkName, parseSubnet } from './networks.js';

/** A NetworkService that keeps networks in a map and records every request. */
async function fakeNetworkService() {
  const nets = new Map<string, Network>();
  const calls: Array<{ method: string; req: unknown }> = [];
  let seq = 0;
  const grpc = new GrpcServer({ log: nullLogger, services: ['oarcloud.v1.NetworkService'] });
  const impl: NetworkServiceServer = withUnimplemented<NetworkServiceServer>(NetworkServiceService, {
    createNetwork: grpc.unary('CreateNetwork', async (req) => {
      calls.push({ method: 'create', req });
      if (req.jobId !== 42) throw new NotFoundError(`no job ${req.jobId}`);
      if (req.subnet && !req.subnet.endsWith('.0/24')) throw new InvalidArgumentError('subnet prefix must be /16 to /29');
      if ([...nets.values()].some((n) => n.name === req.name)) throw new FailedPreconditionError(`job 42 already has a network named ${req.name}`);
      const i = ++seq;
      const n: Network = { id: `n-00000000000${i}`, name: req.name, jobId: req.jobId, owner: 'alice', subnet: req.subnet || `10.90.${i}.0/24`, gateway: `10.90.${i}.1`, vni: 4096 + i, mtu: 1446, nat: req.nat, gatewayNode: req.nat ? 'node-1' : '' };
      nets.set(n.id, n);
      return n;
    }),
    listNetworks: grpc.unary('ListNetworks', async (req) => {
      calls.push({ method: 'list', req });
      if (req.jobId !== 0 && req.jobId !== 42) throw new NotFoundError(`no job ${req.jobId}`);
      return { networks: [...nets.values()] };
    }),
    deleteNetwork: grpc.unary('DeleteNetwork', async (req) => {
      calls.push({ method: 'delete', req });
      if (!nets.delete(req.id)) throw new NotFoundError(`no network ${req.id}`);
      return {};
    }),
  });
  grpc.addService(NetworkServiceService, impl);
  const port = await grpc.listen('127.0.0.1:0');
  const reset = (): void => {
    nets.clear();
    calls.length = 0;
    seq = 0;
  };
  return { nets, calls, reset, address: `127.0.0.1:${port}`, close: () => grpc.close(100) };
}

describe('cli network - create, ls, rm against a fake NetworkService', () => {
  let svc: Awaited<ReturnType<typeof fakeNetworkService>>;
  beforeAll(async () => {
    svc = await fakeNetworkService();
  });
  afterAll(async () => {
    await svc?.close();
  });
  beforeEach(() => svc.reset());

  async function cli(...argv: string[]): Promise<{ code: number; out: string; err: string }> {
    let out = '';
    let err = '';
    const code = await runCli(argv, {
      env: { OARCLOUD_CONTROLLER: svc.address, OARCLOUD_TOKEN: 'oct_test', HOME: '/nonexistent' },
      io: { stdoutIsTTY: false, stderrIsTTY: false, uid: 1000 },
      write: { out: (t) => void (out += t), err: (t) => void (err += t) },
      stdin: process.stdin,
      self: { node: process.execPath, script: 'oarcloud' },
    });
    return { code, out, err };
  }

  it('network - create prints the network (human and --json), with the NAT node when asked', async () => {
    const a = await cli('network', 'create', '--job', '42', 'back');
    expect(a).toMatchObject({ code: EXIT.ok, err: '' });
    expect(a.out).toBe('created network back (n-000000000001) in job 42: 10.90.1.0/24, gateway 10.90.1.1\n');
    const b = await cli('network', 'create', '--job', '42', '--subnet', '172.31.8.0/24', '--nat', 'out', '--json');
    expect(b.code).toBe(EXIT.ok);
    expect(JSON.parse(b.out)).toEqual({ id: 'n-000000000002', name: 'out', jobId: 42, owner: 'alice', subnet: '172.31.8.0/24', gateway: '10.90.2.1', vni: 4098, mtu: 1446, nat: true, gatewayNode: 'node-1' });
    expect(svc.calls.at(-1)).toEqual({ method: 'create', req: { jobId: 42, name: 'out', subnet: '172.31.8.0/24', nat: true, idempotencyKey: '' } });
  });

  it('network - bad values exit 2 with a clear message and send nothing; server refusals keep their exit codes', async () => {
    for (const argv of [
      ['network', 'create', '--job', '42', '--subnet', '10.90.0.300/24', 'x'],
      ['network', 'create', '--job', '42', '--subnet', 'banana', 'x'],
      ['network', 'create', '--job', '42', 'Bad_Name'],
      ['network', 'create', '--job', '42', 'default'],
      ['network', 'create', '--job', 'abc', 'x'],
      ['network', 'ls', '--job', '-1'],
      ['network', 'rm', 'back'],
      ['network', 'rm', '--job', '42', 'no such'],
    ]) {
      const r = await cli(...argv);
      expect(r.code, argv.join(' ')).toBe(EXIT.usage);
      expect(r.err, argv.join(' ')).toMatch(/^oarcloud: invalid|^oarcloud: --job is needed/);
      expect(r.out).toBe('');
    }
    expect(svc.calls).toEqual([]);
    // Missing --job: commander's usage error.
    expect((await cli('network', 'create', 'x')).code).toBe(EXIT.usage);
    // The controller's INVALID_ARGUMENT is exit 2 too, with its message.
    const r = await cli('network', 'create', '--job', '42', '--subnet', '10.90.0.0/8', 'x');
    expect(r).toMatchObject({ code: EXIT.usage, out: '' });
    expect(r.err).toBe('oarcloud: subnet prefix must be /16 to /29\n');
    expect((await cli('network', 'create', '--job', '7', 'x')).code).toBe(EXIT.notFound);
    await cli('network', 'create', '--job', '42', 'x');
    expect((await cli('network', 'create', '--job', '42', 'x')).code).toBe(EXIT.refused);
  });

  it('network - ls shows a table (NAT node or -) or JSON; rm takes a name with --job or an id', async () => {
    expect(await cli('network', 'ls')).toEqual({ code: EXIT.ok, out: '', err: 'no networks\n' });
    expect((await cli('network', 'ls', '--json')).out).toBe('[]\n');
    await cli('network', 'create', '--job', '42', 'back');
    await cli('network', 'create', '--job', '42', '--nat', 'out');
    const ls = await cli('network', 'ls', '--job', '42');
    expect(ls.out.split('\n')).toEqual([
      'ID              NAME  JOB  SUBNET        GATEWAY    NAT          VNI   MTU',
      'n-000000000001  back   42  10.90.1.0/24  10.90.1.1  -           4097  1446',
      'n-000000000002  out    42  10.90.2.0/24  10.90.2.1  via node-1  4098  1446',
      '',
    ]);
    const list = JSON.parse((await cli('network', 'ls', '--json')).out) as Array<{ name: string; gatewayNode: string }>;
    expect(list.map((n) => [n.name, n.gatewayNode])).toEqual([
      ['back', ''],
      ['out', 'node-1'],
    ]);
    expect(await cli('network', 'rm', '--job', '42', 'back')).toEqual({ code: EXIT.ok, out: 'removed network back (n-000000000001)\n', err: '' });
    expect(JSON.parse((await cli('network', 'rm', 'n-000000000002', '--json')).out)).toEqual({ removed: 'n-000000000002', name: 'n-000000000002' });
    expect(svc.nets.size).toBe(0);
    const gone = await cli('network', 'rm', '--job', '42', 'back');
    expect(gone.code).toBe(EXIT.notFound);
    expect(gone.err).toBe('oarcloud: no network back in job 42\n');
    expect((await cli('network', 'rm', 'n-00000000000f')).code).toBe(EXIT.notFound);
  });

  it('network - --help shows examples', async () => {
    const r = await cli('network', 'create', '--help');
    expect(r.code).toBe(EXIT.ok);
    expect(r.out).toMatch(/Examples:\n {2}oarcloud network create --job 1234 back/);
    expect((await cli('network', '--help')).out).toMatch(/--nat also reaches\nthe outside/);
  });

  it('network - parse helpers', () => {
    expect(parseSubnet(' 10.90.50.0/24 ')).toBe('10.90.50.0/24');
    expect(() => parseSubnet('10.90.50.0/33')).toThrow(InvalidArgumentError);
    expect(parseNetworkName('a-1')).toBe('a-1');
    expect(() => parseNetworkName('-a')).toThrow(InvalidArgumentError);
    expect(() => parseNetworkName('a'.repeat(33))).toThrow(InvalidArgumentError);
  });
});
