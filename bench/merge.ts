/**
 * One table from several result files (ranges over every run that has a
 * figure), e.g. a full run and repeats of some sections:
 *
 *   npx tsx bench/merge.ts bench/results/a.json bench/results/b.json
 */
import { readFileSync } from 'node:fs';
import type { RepResults } from './bench.js';
import { buildTable, formatTable } from './table.js';

const files = process.argv.slice(2);
const reps: RepResults[] = [];
for (const f of files) {
  const d = JSON.parse(readFileSync(f, 'utf8')) as { runs: RepResults[]; commit: string; date: string };
  console.log(`${f}: commit ${d.commit}, ${d.date}, load ${d.runs.map((r) => Object.values(r.load).map((l) => l.toFixed(0)).join('/')).join('; ')}`);
  reps.push(...d.runs);
}
console.log(formatTable(buildTable(reps)));
