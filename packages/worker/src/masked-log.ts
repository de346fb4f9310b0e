/**
 * A build's log with its secrets masked before a byte leaves the worker
 * (issue 13): everything written (the script's output and the worker's own
 * `[buildfleet]` lines, in the order written) passes through a
 * `SecretMasker`, which keeps back only what could still be the start of a
 * secret, so a value split across two reads of the pipe, or two log chunks,
 * is masked whole. The sink (the log streamer) cuts and uploads chunks of
 * what is already masked.
 */
import { SecretMasker } from '@buildfleet/protocol';

/** Where masked bytes go: the log streamer's interface. */
export interface LogSink {
  write(data: Buffer | string): void;
  flush(): Promise<void>;
  close(): void;
}

function toBuffer(bytes: Uint8Array): Buffer {
  return Buffer.isBuffer(bytes) ? bytes : Buffer.from(bytes.buffer, bytes.byteOffset, bytes.length);
}

export class MaskedLog implements LogSink {
  private readonly masker = new SecretMasker();

  constructor(private readonly sink: LogSink) {}

  /** Masks these values from now on; call before the script that may print them starts. */
  addSecrets(values: readonly string[]): void {
    this.masker.add(values);
  }

  write(data: Buffer | string): void {
    const out = this.masker.write(typeof data === 'string' ? Buffer.from(data) : data);
    if (out.length > 0) this.sink.write(toBuffer(out));
  }

  /**
   * Passes on what was kept back (masked) and uploads everything. Call when
   * nothing more of the current output can follow (the script has exited).
   */
  async flush(): Promise<void> {
    const rest = this.masker.end();
    if (rest.length > 0) this.sink.write(toBuffer(rest));
    await this.sink.flush();
  }

  close(): void {
    this.sink.close();
  }
}
