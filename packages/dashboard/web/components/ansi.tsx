/**
 * One log line with its ANSI colours (parsed by `anser`) as spans: the 16
 * basic colours are classes (the palette lives in the stylesheet), 256-colour
 * and true colours are set through CSSOM, which the page's CSP allows (no
 * `style` attributes in markup).
 */
import Anser, { type AnserJsonEntry } from 'anser';

const OPTIONS = { json: true as const, use_classes: true, remove_empty: true };

/** xterm's 256-colour palette, entries 16..255, as `rgb(…)`. */
function palette(index: number): string {
  if (index >= 232) {
    const v = 8 + (index - 232) * 10;
    return `rgb(${v},${v},${v})`;
  }
  const i = index - 16;
  const step = (n: number) => (n === 0 ? 0 : 55 + n * 40);
  return `rgb(${step(Math.floor(i / 36))},${step(Math.floor(i / 6) % 6)},${step(i % 6)})`;
}

function colour(cls: string | null, truecolor: string | null): { cls?: string; css?: string } {
  if (!cls) return {};
  if (cls === 'ansi-truecolor' && truecolor) return { css: `rgb(${truecolor})` };
  const p = /^ansi-palette-(\d+)$/.exec(cls);
  if (p) return { css: palette(Number(p[1])) };
  return { cls };
}

function span(e: AnserJsonEntry, key: number) {
  const fg = colour(e.fg, e.fg_truecolor);
  const bg = colour(e.bg, e.bg_truecolor);
  const classes: string[] = [];
  if (fg.cls) classes.push(`${fg.cls}-fg`);
  if (bg.cls) classes.push(`${bg.cls}-bg`);
  for (const d of e.decorations ?? []) classes.push(`ansi-${d}`);
  const style: Record<string, string> = {};
  if (fg.css) style.color = fg.css;
  if (bg.css) style.backgroundColor = bg.css;
  if (classes.length === 0 && !fg.css && !bg.css) return e.content;
  return (
    <span key={key} class={classes.join(' ') || undefined} style={fg.css || bg.css ? style : undefined}>
      {e.content}
    </span>
  );
}

export function AnsiLine({ text }: { text: string }) {
  if (!text.includes('\x1b')) return <>{text}</>;
  const parts = Anser.ansiToJson(text, OPTIONS);
  return <>{parts.map(span)}</>;
}
