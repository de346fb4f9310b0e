/**
 * A build log held as lines for the log view: text is appended as it
 * arrives; each line keeps the ANSI colour codes still in force where it
 * starts, so any one line renders on its own (the view renders only the
 * lines on screen). A line rewritten with carriage returns (progress bars)
 * shows what a terminal would: the text after the last `\r`.
 */
const SGR = /\x1b\[([0-9;]*)m/g;
const ANSI = /\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[@-Z\\-_]/g;
/** Longest colour prefix carried into a line, characters. */
const MAX_CARRY = 256;

export class LogBuffer {
  private readonly lines: string[] = [];
  private readonly carries: string[] = [];
  private partial = '';
  private carry = '';
  private plain: Array<string | undefined> = [];
  /** Set when the text starts mid-log: everything up to the first newline is a cut line and dropped. */
  private skipping = false;
  /** Bumped on every change; a view re-renders when it moves. */
  version = 0;

  get length(): number {
    return this.lines.length + (this.partial ? 1 : 0);
  }

  /** Appends text (any split: a line may continue across calls). */
  append(text: string): void {
    if (this.skipping) {
      const nl = text.indexOf('\n');
      if (nl < 0) return;
      this.skipping = false;
      text = text.slice(nl + 1);
    }
    if (!text) return;
    const parts = (this.partial + text).split('\n');
    this.partial = parts.pop() ?? '';
    for (const raw of parts) {
      const line = terminalLine(raw);
      this.lines.push(line);
      this.carries.push(this.carry);
      this.carry = carryAfter(this.carry, line);
    }
    this.version += 1;
  }

  /**
   * Empties the buffer. `midLine`: the next text starts inside a line (a
   * log read from an offset), so its first, cut line is dropped.
   */
  clear(midLine = false): void {
    this.skipping = midLine;
    this.lines.length = 0;
    this.carries.length = 0;
    this.plain = [];
    this.partial = '';
    this.carry = '';
    this.version += 1;
  }

  /** Line `i` (from 0) with the colour codes in force at its start prefixed. */
  ansiLine(i: number): string {
    if (i < this.lines.length) return this.carries[i]! + this.lines[i]!;
    return this.carry + terminalLine(this.partial);
  }

  /** Line `i` without escape codes (what a search looks in). */
  plainLine(i: number): string {
    if (i >= this.lines.length) return terminalLine(this.partial).replace(ANSI, '');
    let p = this.plain[i];
    if (p === undefined) {
      p = this.lines[i]!.replace(ANSI, '');
      this.plain[i] = p;
    }
    return p;
  }

  /** Indexes of the lines containing `needle` (case-insensitive). */
  search(needle: string): number[] {
    const n = needle.toLowerCase();
    const out: number[] = [];
    if (!n) return out;
    for (let i = 0; i < this.length; i++) if (this.plainLine(i).toLowerCase().includes(n)) out.push(i);
    return out;
  }
}

/** What a terminal shows for a line: a trailing `\r` dropped, else the text after the last `\r`. */
function terminalLine(raw: string): string {
  const line = raw.endsWith('\r') ? raw.slice(0, -1) : raw;
  const cr = line.lastIndexOf('\r');
  return cr < 0 ? line : line.slice(cr + 1);
}

/** The colour codes in force after `line`, given those in force before it. */
function carryAfter(before: string, line: string): string {
  if (!line.includes('\x1b[')) return before;
  let carry = before;
  for (const m of line.matchAll(SGR)) {
    const params = m[1] ?? '';
    if (params === '' || params === '0' || params.startsWith('0;')) carry = params.length > 2 ? `\x1b[${params.slice(2)}m` : '';
    else carry += m[0];
  }
  return carry.length > MAX_CARRY ? carry.slice(carry.indexOf("\x1b", carry.length - MAX_CARRY)) : carry;
}
