/**
 * An undo list for multi-step host changes: each step that succeeds registers how to take
 * it back; on failure the steps are undone in reverse order, and failures of the undo are
 * logged, never thrown over the original error.
 */
import { errFields, type Logger } from '@oarcloud/common';

export class Undo {
  private readonly steps: Array<{ what: string; fn: () => Promise<unknown> | unknown }> = [];

  add(what: string, fn: () => Promise<unknown> | unknown): void {
    this.steps.push({ what, fn });
  }

  /** Forget the steps: the change is committed. */
  commit(): void {
    this.steps.length = 0;
  }

  async run(log: Logger): Promise<void> {
    while (this.steps.length > 0) {
      const step = this.steps.pop()!;
      try {
        await step.fn();
      } catch (err) {
        log.error('undo step failed', { step: step.what, ...errFields(err) });
      }
    }
  }
}
