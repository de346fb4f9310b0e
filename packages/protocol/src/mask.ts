/**
 * Secret masking for build logs (issue 13): every form of a secret value a
 * build could print is replaced by `***` before the log leaves the worker,
 * and again by the controller before it stores a chunk (a second line for a
 * worker that did not mask).
 *
 * The forms masked, after GitHub's runner (`ValueEncoders` in
 * actions/runner): the value itself; the value without surrounding
 * whitespace (a value read from a file usually ends in a newline); each line
 * of a multi-line value; its JSON-string and URL escapes; and its base64
 * (standard and URL alphabets) — both as printed alone (`printf %s "$S" |
 * base64`) and the characters that are the same wherever the value sits in a
 * longer base64 text (three byte alignments). Derived forms shorter than
 * `MIN_DERIVED_BYTES` are not masked: they would blank out ordinary text.
 *
 * Works on bytes (`Uint8Array`; a Node Buffer is one) and needs no Node
 * APIs, so the dashboard may import the protocol package unchanged.
 */

/** What a masked secret becomes in the log. */
export const MASK = '***';

/** Derived forms (lines, escapes, base64 pieces) shorter than this many bytes are not masked. */
export const MIN_DERIVED_BYTES = 6;

const encoder = new TextEncoder();
const MASK_BYTES = encoder.encode(MASK);

function toBase64(bytes: Uint8Array): string {
  let bin = '';
  for (const b of bytes) bin += String.fromCharCode(b);
  return btoa(bin);
}

/**
 * The base64 characters of `value` that do not depend on the bytes around it
 * when it starts at byte offset `shift` (0, 1 or 2) of a longer text: char i
 * covers bits [6i, 6i+6) and is kept when they all belong to the value.
 */
function base64Core(value: Uint8Array, shift: number): string {
  const padded = new Uint8Array(shift + value.length + 2);
  padded.set(value, shift);
  const text = toBase64(padded).replace(/=+$/, '');
  const first = Math.ceil((8 * shift) / 6);
  const end = Math.floor((8 * (shift + value.length)) / 6);
  return end > first ? text.slice(first, end) : '';
}

/**
 * Every byte pattern masked for `values`, longest first, without duplicates.
 * Empty values are ignored.
 */
export function maskPatterns(values: readonly string[]): Uint8Array[] {
  const forms = new Set<string>();
  const derived = (s: string) => {
    if (encoder.encode(s).length >= MIN_DERIVED_BYTES) forms.add(s);
  };
  for (const raw of values) {
    // Surrounding whitespace (a value read from a file ends in a newline) is
    // not secret: masking it would join the log's lines.
    const value = raw.trim() || raw;
    if (value.length === 0) continue;
    forms.add(value);
    for (const line of value.split(/\r?\n/)) if (line !== value) derived(line.trim());
    for (const v of new Set([value, raw])) {
      derived(JSON.stringify(v).slice(1, -1));
      derived(encodeURIComponent(v));
      const bytes = encoder.encode(v);
      const whole = toBase64(bytes);
      for (const b64 of [whole, whole.replace(/=+$/, ''), base64Core(bytes, 0), base64Core(bytes, 1), base64Core(bytes, 2)]) {
        derived(b64);
        derived(b64.replace(/\+/g, '-').replace(/\//g, '_'));
      }
    }
  }
  return [...forms]
    .map((f) => encoder.encode(f))
    .sort((a, b) => b.length - a.length);
}

/** Positions where `pattern` occurs in `buf` (overlapping occurrences included). */
function occurrences(buf: Uint8Array, pattern: Uint8Array): number[] {
  const out: number[] = [];
  const first = pattern[0]!;
  const last = buf.length - pattern.length;
  for (let i = buf.indexOf(first); i !== -1 && i <= last; i = buf.indexOf(first, i + 1)) {
    if (startsWithAt(buf, pattern, i, pattern.length)) out.push(i);
  }
  return out;
}

/** Whether `buf[at .. at+n)` equals `pattern[0 .. n)`. */
function startsWithAt(buf: Uint8Array, pattern: Uint8Array, at: number, n: number): boolean {
  for (let j = 0; j < n; j++) if (buf[at + j] !== pattern[j]) return false;
  return true;
}

type Interval = [start: number, end: number];

/** Matches of every pattern in `buf`, merged where they overlap or touch, in order. */
function matches(buf: Uint8Array, patterns: readonly Uint8Array[]): Interval[] {
  const found: Interval[] = [];
  for (const p of patterns) for (const i of occurrences(buf, p)) found.push([i, i + p.length]);
  found.sort((a, b) => a[0] - b[0] || b[1] - a[1]);
  const merged: Interval[] = [];
  for (const [s, e] of found) {
    const top = merged[merged.length - 1];
    if (top && s <= top[1]) top[1] = Math.max(top[1], e);
    else merged.push([s, e]);
  }
  return merged;
}

/** `bytes` with every interval overwritten by `*`, length unchanged. */
function overwrite(bytes: Uint8Array, intervals: readonly Interval[]): Uint8Array {
  const out = bytes.slice();
  for (const [s, e] of intervals) out.fill(0x2a, s, e);
  return out;
}

/** `buf[0 .. end)` with every interval (all inside it) replaced by MASK. */
function replace(buf: Uint8Array, intervals: readonly Interval[], end: number): Uint8Array {
  let size = end;
  for (const [s, e] of intervals) size += MASK_BYTES.length - (e - s);
  const out = new Uint8Array(size);
  let from = 0;
  let to = 0;
  for (const [s, e] of intervals) {
    out.set(buf.subarray(from, s), to);
    to += s - from;
    out.set(MASK_BYTES, to);
    to += MASK_BYTES.length;
    from = e;
  }
  out.set(buf.subarray(from, end), to);
  return out;
}

/**
 * Masks secrets in a byte stream cut into arbitrary pieces: `write` returns
 * what can be decided now and keeps back the shortest tail that could still
 * be the start of a secret (so a value split across two writes, or two log
 * chunks, is still masked whole); `end` returns the rest. Without patterns
 * it passes bytes through untouched and keeps nothing back.
 */
export class SecretMasker {
  private patterns: Uint8Array[] = [];
  private tail: Uint8Array = new Uint8Array(0);

  constructor(values: readonly string[] = []) {
    this.add(values);
  }

  /** Masks these values too from now on (bytes already returned stay as they were). */
  add(values: readonly string[]): void {
    if (values.length === 0) return;
    const all = new Map<string, Uint8Array>();
    for (const p of [...this.patterns, ...maskPatterns(values)]) all.set(p.join(','), p);
    this.patterns = [...all.values()].sort((a, b) => b.length - a.length);
  }

  /** Whether any value is masked. */
  get active(): boolean {
    return this.patterns.length > 0;
  }

  /** Bytes kept back, waiting for the next write or `end`. */
  get pending(): number {
    return this.tail.length;
  }

  /** Masks every complete occurrence in one self-contained piece of text (no state). */
  mask(bytes: Uint8Array): Uint8Array {
    if (this.patterns.length === 0) return bytes;
    const intervals = matches(bytes, this.patterns);
    return intervals.length === 0 ? bytes : replace(bytes, intervals, bytes.length);
  }

  /**
   * Like `mask`, but each occurrence becomes as many `*` as it had bytes:
   * the controller's second line, which must not change a log chunk's
   * length (the worker counts offsets in the bytes it sent).
   */
  maskKeepingLength(bytes: Uint8Array): Uint8Array {
    if (this.patterns.length === 0) return bytes;
    const intervals = matches(bytes, this.patterns);
    return intervals.length === 0 ? bytes : overwrite(bytes, intervals);
  }

  /** Masked bytes that are safe to pass on; keeps back a possible secret's beginning. */
  write(chunk: Uint8Array): Uint8Array {
    if (this.patterns.length === 0 && this.tail.length === 0) return chunk;
    const buf = this.tail.length === 0 ? chunk : concat(this.tail, chunk);
    const intervals = matches(buf, this.patterns);
    let cut = buf.length - this.heldBack(buf);
    // A match that straddles the cut waits whole in the tail.
    for (let moved = true; moved; ) {
      moved = false;
      for (const [s, e] of intervals) {
        if (s < cut && e > cut) {
          cut = s;
          moved = true;
        }
      }
    }
    this.tail = buf.slice(cut);
    return replace(buf, intervals.filter(([, e]) => e <= cut), cut);
  }

  /** Everything kept back, masked; the stream ends here (the masker can be reused). */
  end(): Uint8Array {
    const rest = this.tail;
    this.tail = new Uint8Array(0);
    return this.mask(rest);
  }

  /** Length of the longest tail of `buf` that is a proper prefix of some pattern. */
  private heldBack(buf: Uint8Array): number {
    let start = buf.length;
    for (const p of this.patterns) {
      for (let i = Math.max(0, buf.length - p.length + 1); i < start; i++) {
        if (buf[i] === p[0] && startsWithAt(buf, p, i, buf.length - i)) {
          start = i;
          break;
        }
      }
    }
    return buf.length - start;
  }
}

function concat(a: Uint8Array, b: Uint8Array): Uint8Array {
  const out = new Uint8Array(a.length + b.length);
  out.set(a, 0);
  out.set(b, a.length);
  return out;
}
