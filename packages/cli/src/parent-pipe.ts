/**
 * The pipe `up` holds open on its worker child's standard input. Its first
 * line may carry the enrollment token (`--enrollment-token-stdin`: never in
 * an environment a build could read); its end means the process at the other
 * end is gone (`--stop-with-stdin`). The kernel closes a pipe's write end
 * however its holder dies, SIGKILL included, so a child watching for the end
 * learns of its parent's death without polling for it.
 */
import type { Readable } from 'node:stream';

export class StdinPipe {
  /** The first line, trimmed ('' when the pipe ended before one came). */
  readonly firstLine: Promise<string>;
  /** Settles when the pipe ends (end of file, an error, or `release`). */
  readonly ended: Promise<void>;

  constructor(private readonly stream: Readable) {
    let text = '';
    let lineDone: ((line: string) => void) | undefined;
    this.firstLine = new Promise((resolve) => (lineDone = resolve));
    const line = (l: string) => {
      lineDone?.(l.trim());
      lineDone = undefined;
    };
    this.ended = new Promise((resolve) => {
      const end = () => {
        line(text);
        resolve();
      };
      stream.once('end', end);
      stream.once('close', end);
      stream.once('error', end);
    });
    stream.setEncoding('utf8');
    stream.on('data', (chunk: string) => {
      if (!lineDone) return;
      text += chunk;
      const nl = text.indexOf('\n');
      if (nl >= 0) line(text.slice(0, nl));
    });
  }

  /** Stops reading, so the pipe keeps the process alive no longer. */
  release(): void {
    this.stream.destroy();
  }
}
