/**
 * The run's trace: every event with its simulated time and actor, in the
 * order it happened. Ids (UUIDs) are replaced by stable aliases (`b3`, `w1`,
 * `id7`) so the same seed prints the same trace, and `digest()` compares runs.
 */
import { createHash } from 'node:crypto';

const UUID = /[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}/gi;

export class Trace {
  readonly events: string[] = [];
  private readonly aliases = new Map<string, string>();
  private nextId = 1;

  constructor(private readonly now: () => number) {}

  /** Names an id (e.g. a build `b3`); later mentions print the alias. */
  alias(id: string, name: string): void {
    this.aliases.set(id.toLowerCase(), name);
  }

  /** A readable, run-independent form of `text` (ids → aliases). */
  clean(text: string): string {
    return text.replace(UUID, (m) => {
      const k = m.toLowerCase();
      let a = this.aliases.get(k);
      if (!a) {
        a = `id${this.nextId++}`;
        this.aliases.set(k, a);
      }
      return a;
    });
  }

  add(actor: string, what: string): void {
    const t = (this.now() / 1000).toFixed(3).padStart(9);
    this.events.push(`${t}s ${actor.padEnd(10)} ${this.clean(what)}`);
  }

  /** SHA-256 of the whole trace: equal digests mean the runs were identical. */
  digest(): string {
    const h = createHash('sha256');
    for (const e of this.events) h.update(e).update('\n');
    return h.digest('hex');
  }

  tail(n: number): string[] {
    return this.events.slice(-n);
  }
}
