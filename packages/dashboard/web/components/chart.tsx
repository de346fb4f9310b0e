/**
 * A time-series chart drawn by uPlot on a canvas (no inline markup styles:
 * uPlot sets sizes through CSSOM). Resizes with its container.
 */
import { useEffect, useRef } from 'preact/hooks';
import uPlot from 'uplot';
import 'uplot/dist/uPlot.min.css';

export interface ChartSeries {
  label: string;
  /** CSS colour. */
  stroke: string;
  fill?: string;
  bars?: boolean;
  /** How a value reads in the legend. */
  format?(v: number): string;
}

export interface ChartProps {
  /** The chart's accessible name. */
  label: string;
  /** x: epoch seconds; one array per series, same length. */
  x: number[];
  ys: Array<Array<number | null>>;
  series: ChartSeries[];
  yLabel: string;
  height?: number;
}

export function Chart({ label, x, ys, series, yLabel, height = 200 }: ChartProps) {
  const box = useRef<HTMLDivElement>(null);
  const plot = useRef<uPlot | null>(null);

  useEffect(() => {
    const el = box.current;
    if (!el) return;
    const bars = uPlot.paths.bars?.({ size: [0.7, 24], gap: 1 });
    // Canvas text and lines take real colours, not CSS variables.
    const css = getComputedStyle(el);
    const muted = css.getPropertyValue('--muted').trim() || '#5f6b7c';
    const grid = { stroke: css.getPropertyValue('--line').trim() || '#e3e7ed', width: 1 };
    const font = `12px ${css.fontFamily}`;
    const opts: uPlot.Options = {
      width: Math.max(200, el.clientWidth),
      height,
      cursor: { drag: { x: false, y: false } },
      legend: { live: true },
      scales: { x: { time: true }, y: { range: (_u, _min, max) => [0, Math.max(1, max * 1.1)] } },
      axes: [
        { stroke: muted, font, grid, ticks: grid },
        { label: yLabel, stroke: muted, font, labelFont: font, grid, ticks: grid, size: 50 },
      ],
      series: [
        {},
        ...series.map((s) => ({
          label: s.label,
          stroke: s.stroke,
          fill: s.fill,
          width: s.bars ? 0 : 2,
          paths: s.bars ? bars : undefined,
          // Points too: a minute with data between empty ones is no line.
          points: { show: !s.bars, size: 6, fill: s.stroke },
          value: (_u: uPlot, v: number | null) => (v === null ? '–' : s.format ? s.format(v) : String(v)),
        })),
      ],
    };
    const u = new uPlot(opts, [x, ...ys] as uPlot.AlignedData, el);
    plot.current = u;
    const ro = new ResizeObserver(() => u.setSize({ width: Math.max(200, el.clientWidth), height }));
    ro.observe(el);
    return () => {
      ro.disconnect();
      u.destroy();
      plot.current = null;
    };
  }, [series.length, height]);

  useEffect(() => {
    plot.current?.setData([x, ...ys] as uPlot.AlignedData);
  }, [x, ys]);

  return <div class="chart" ref={box} role="img" aria-label={label} />;
}
