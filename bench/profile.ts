/**
 * Summarises a V8 `.cpuprofile` (from `npm run bench -- --cpu-prof`): where
 * the busy time went, by package and by function (self time), idle and GC
 * apart. Usage:
 *
 *   npx tsx bench/profile.ts bench/results/profiles-…/postgres-drain-1/*.cpuprofile [--top 25]
 */
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';

interface Node {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  children?: number[];
}
interface Profile {
  nodes: Node[];
  samples: number[];
  timeDeltas: number[];
  startTime: number;
  endTime: number;
}

/** `node_modules/pg-protocol/…` → `pg-protocol`; `packages/controller/src/store/x.ts` → `controller/store/x.ts`. */
export function packageOf(url: string, fn: string): string {
  if (!url) return fn === '(garbage collector)' || fn === '(idle)' || fn === '(program)' ? fn : '(native)';
  const nm = /node_modules\/((?:@[^/]+\/)?[^/]+)/.exec(url);
  if (nm) return nm[1]!;
  const own = /packages\/([^/]+)\/(?:src|dist)\/(.+)$/.exec(url);
  if (own) return `${own[1]}/${own[2]!.replace(/\.js$/, '.ts')}`;
  if (url.startsWith('node:')) return url;
  return url.replace(/^file:\/\/.*\/(bench\/)/, '$1');
}

/** Self time per key (ms), from the sample stream. */
export function selfTimes(p: Profile, key: (n: Node) => string): Map<string, number> {
  const byId = new Map(p.nodes.map((n) => [n.id, n]));
  const out = new Map<string, number>();
  for (let i = 0; i < p.samples.length; i++) {
    const n = byId.get(p.samples[i]!)!;
    const k = key(n);
    out.set(k, (out.get(k) ?? 0) + (p.timeDeltas[i] ?? 0) / 1000);
  }
  return out;
}

/**
 * Each sample charged to its nearest caller in the controller's own code
 * (`controller/…`), skipping anonymous frames: which of our functions the
 * busy time (library and native time included) was spent under.
 */
export function ownerTimes(p: Profile): Map<string, number> {
  const parent = new Map<number, Node>();
  for (const n of p.nodes) for (const c of n.children ?? []) parent.set(c, n);
  const byId = new Map(p.nodes.map((n) => [n.id, n]));
  const owner = new Map<number, string>();
  const find = (n: Node): string => {
    const cached = owner.get(n.id);
    if (cached) return cached;
    const f = n.callFrame;
    const pkg = packageOf(f.url, f.functionName);
    let key: string;
    if (pkg.startsWith('controller/') && f.functionName) key = `${f.functionName}  ${pkg}`;
    else {
      const up = parent.get(n.id);
      key = up ? find(up) : pkg.startsWith('(') ? pkg : '(outside controller code)';
    }
    owner.set(n.id, key);
    return key;
  };
  const out = new Map<string, number>();
  for (let i = 0; i < p.samples.length; i++) {
    const k = find(byId.get(p.samples[i]!)!);
    out.set(k, (out.get(k) ?? 0) + (p.timeDeltas[i] ?? 0) / 1000);
  }
  return out;
}

function print(title: string, m: Map<string, number>, busy: number, top: number): void {
  console.log(`\n${title}`);
  for (const [k, ms] of [...m].sort((a, b) => b[1] - a[1]).slice(0, top)) {
    console.log(`${((ms / busy) * 100).toFixed(1).padStart(6)}%  ${ms.toFixed(0).padStart(7)} ms  ${k}`);
  }
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const { values, positionals } = parseArgs({ allowPositionals: true, options: { top: { type: 'string', default: '25' } } });
  for (const file of positionals) {
    const p = JSON.parse(readFileSync(file, 'utf8')) as Profile;
    const total = (p.endTime - p.startTime) / 1000;
    const byPkg = selfTimes(p, (n) => packageOf(n.callFrame.url, n.callFrame.functionName));
    const idle = byPkg.get('(idle)') ?? 0;
    const busy = total - idle;
    console.log(`${file}\n  ${total.toFixed(0)} ms profiled, ${busy.toFixed(0)} ms busy (${((busy / total) * 100).toFixed(0)}%), GC ${(byPkg.get('(garbage collector)') ?? 0).toFixed(0)} ms`);
    byPkg.delete('(idle)');
    print('self time by package / module (% of busy)', byPkg, busy, Number(values.top));
    const byFn = selfTimes(p, (n) => (n.callFrame.url || n.callFrame.functionName === '' ? `${n.callFrame.functionName || '(anonymous)'}  ${packageOf(n.callFrame.url, n.callFrame.functionName)}:${n.callFrame.lineNumber + 1}` : n.callFrame.functionName));
    byFn.delete('(idle)');
    print('self time by function (% of busy)', byFn, busy, Number(values.top));
    const byOwner = ownerTimes(p);
    byOwner.delete('(idle)');
    print('busy time by nearest controller function (libraries and native included)', byOwner, busy, Number(values.top));
  }
}
