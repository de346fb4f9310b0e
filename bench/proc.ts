/**
 * A process's memory and CPU from /proc (Linux), read by the parent so a busy
 * child's event loop cannot delay the reading. Peak RSS is the kernel's
 * high-water mark (`VmHWM`), reset through `/proc/<pid>/clear_refs` (5).
 */
import { readFileSync, writeFileSync } from 'node:fs';

const TICKS_PER_SECOND = 100; // USER_HZ on Linux

/** Resident set size, bytes. */
export function rssBytes(pid: number): number {
  return statusField(pid, 'VmRSS');
}

/** Peak resident set size since start or the last `resetPeak`, bytes. */
export function peakRssBytes(pid: number): number {
  return statusField(pid, 'VmHWM');
}

/** Resets the peak to the current RSS; false when the kernel refuses (then sample instead). */
export function resetPeak(pid: number): boolean {
  try {
    writeFileSync(`/proc/${pid}/clear_refs`, '5');
    return true;
  } catch {
    return false;
  }
}

/** User + system CPU time used so far, ms. */
export function cpuMs(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return ((Number(fields[11]) + Number(fields[12])) * 1000) / TICKS_PER_SECOND;
}

function statusField(pid: number, name: string): number {
  const m = new RegExp(`^${name}:\\s+(\\d+) kB`, 'm').exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) * 1024 : NaN;
}

/** Samples RSS every `everyMs` until stopped; returns the largest seen, bytes. */
export function sampleRss(pid: number, everyMs = 10): () => number {
  let max = rssBytes(pid);
  const t = setInterval(() => {
    try {
      max = Math.max(max, rssBytes(pid));
    } catch {
      /* the process ended */
    }
  }, everyMs);
  return () => {
    clearInterval(t);
    return max;
  };
}
