/**
 * What every fake driver of this folder shares: a record of calls and injected errors.
 */
export interface RecordedCall {
  method: string;
  args: unknown[];
}

export class FakeRecorder {
  /** Every call, in order. */
  readonly calls: RecordedCall[] = [];
  private readonly failures = new Map<string, Error[]>();

  /** The next call of `method` throws `err` (queue several to fail several calls). */
  failNext(method: string, err: Error): void {
    const queue = this.failures.get(method) ?? [];
    queue.push(err);
    this.failures.set(method, queue);
  }

  /** Calls of one method. */
  callsOf(method: string): unknown[][] {
    return this.calls.filter((c) => c.method === method).map((c) => c.args);
  }

  protected record(method: string, ...args: unknown[]): void {
    this.calls.push({ method, args });
  }

  protected maybeFail(method: string): void {
    const err = this.failures.get(method)?.shift();
    if (err) throw err;
  }
}
