/**
 * The log view: only the lines on screen are in the DOM (`@tanstack/virtual-core`,
 * fixed row height), so 200,000 lines scroll like 200. Line numbers are
 * links (`#L42`) that select a line and survive a reload; the view follows
 * new lines while scrolled to the end and stops following when the reader
 * scrolls up; search jumps between matching lines.
 */
import { useEffect, useLayoutEffect, useMemo, useRef, useState } from 'preact/hooks';
import { Virtualizer, elementScroll, observeElementOffset, observeElementRect } from '@tanstack/virtual-core';
import type { LogBuffer } from '../log-buffer.js';
import { AnsiLine } from './ansi.js';

/** Row height, px; the stylesheet's `.log-row` line-height matches. */
const ROW = 20;

export interface LogViewProps {
  buffer: LogBuffer;
  /** Bumped when the buffer changed. */
  version: number;
  /** Still receiving lines. */
  live: boolean;
  /** Shown when the log is empty. */
  emptyText: string;
  onDownload(): void;
}

function lineFromHash(): number | null {
  const m = /^#L(\d+)$/.exec(location.hash);
  return m ? Number(m[1]) - 1 : null;
}

export function LogView({ buffer, version, live, emptyText, onDownload }: LogViewProps) {
  const scroller = useRef<HTMLDivElement>(null);
  const [, rerender] = useState(0);
  const [follow, setFollow] = useState(lineFromHash() === null);
  const [selected, setSelected] = useState<number | null>(lineFromHash());
  const [query, setQuery] = useState('');
  const [hits, setHits] = useState<number[] | null>(null);
  const [hit, setHit] = useState(0);
  const programmatic = useRef(false);
  const jumpedToHash = useRef(false);
  const count = buffer.length;

  const virtualizer = useMemo(
    () =>
      new Virtualizer<HTMLDivElement, HTMLDivElement>({
        count,
        getScrollElement: () => scroller.current,
        estimateSize: () => ROW,
        overscan: 30,
        observeElementRect,
        observeElementOffset,
        scrollToFn: elementScroll,
        onChange: () => rerender((n) => n + 1),
      }),
    [],
  );
  virtualizer.setOptions({ ...virtualizer.options, count });
  useLayoutEffect(() => virtualizer._didMount(), [virtualizer]);
  useLayoutEffect(() => {
    virtualizer._willUpdate();
  });

  // Follow the end while following.
  useLayoutEffect(() => {
    const el = scroller.current;
    if (follow && el && count > 0) {
      programmatic.current = true;
      el.scrollTop = el.scrollHeight;
    }
  }, [version, follow, count]);

  // A #L anchor scrolls to its line once that line has arrived.
  useEffect(() => {
    if (jumpedToHash.current || selected === null || selected >= count) return;
    jumpedToHash.current = true;
    virtualizer.scrollToIndex(selected, { align: 'center' });
  }, [count, selected, virtualizer]);

  const onScroll = () => {
    const el = scroller.current;
    if (!el) return;
    if (programmatic.current) {
      programmatic.current = false;
      return;
    }
    const atEnd = el.scrollTop + el.clientHeight >= el.scrollHeight - ROW;
    if (atEnd !== follow) setFollow(atEnd);
  };

  const jumpToEnd = () => {
    setFollow(true);
    const el = scroller.current;
    if (el) {
      programmatic.current = true;
      el.scrollTop = el.scrollHeight;
    }
  };

  const runSearch = (direction: 1 | -1) => {
    let list = hits;
    let index = hit;
    if (list === null) {
      list = buffer.search(query.trim());
      setHits(list);
      index = direction === 1 ? 0 : list.length - 1;
    } else {
      index = list.length ? (hit + direction + list.length) % list.length : 0;
    }
    setHit(index);
    const line = list[index];
    if (line !== undefined) {
      setFollow(false);
      setSelected(line);
      virtualizer.scrollToIndex(line, { align: 'center' });
    }
  };

  const selectLine = (i: number, ev: MouseEvent) => {
    ev.preventDefault();
    setSelected(i);
    history.replaceState(history.state, '', `${location.pathname}${location.search}#L${i + 1}`);
  };

  const hitSet = useMemo(() => new Set(hits ?? []), [hits]);
  const current = hits && hits.length ? hits[hit] : undefined;
  const items = virtualizer.getVirtualItems();
  const digits = String(Math.max(count, 1)).length;

  return (
    <div class="log">
      <div class="log-toolbar" role="toolbar" aria-label="Log tools">
        <form
          class="log-search"
          role="search"
          onSubmit={(e) => {
            e.preventDefault();
            runSearch(1);
          }}
        >
          <input
            type="search"
            placeholder="Search the log"
            aria-label="Search the log"
            value={query}
            onInput={(e) => {
              setQuery((e.target as HTMLInputElement).value);
              setHits(null);
            }}
          />
          <button type="button" class="btn small" aria-label="Previous match" disabled={!query} onClick={() => runSearch(-1)}>
            ↑
          </button>
          <button type="submit" class="btn small" aria-label="Next match" disabled={!query}>
            ↓
          </button>
          <span class="muted log-hits" aria-live="polite">
            {hits === null ? '' : hits.length === 0 ? 'no matches' : `${hit + 1} of ${hits.length}`}
          </span>
        </form>
        <span class="log-meta muted">
          {count.toLocaleString()} {count === 1 ? 'line' : 'lines'}
          {live ? (follow ? ' · following' : ' · paused') : ''}
        </span>
        <button type="button" class="btn small" onClick={jumpToEnd} disabled={count === 0}>
          Jump to end
        </button>
        <button type="button" class="btn small" onClick={onDownload}>
          Download raw
        </button>
      </div>
      <div class="log-scroll" ref={scroller} onScroll={onScroll} tabIndex={0} aria-label="Build log" role="log">
        {count === 0 ? (
          <div class="log-empty">{emptyText}</div>
        ) : (
          <div class="log-sizer" style={{ height: `${virtualizer.getTotalSize()}px`, '--digits': String(digits) }}>
            {items.map((item) => {
              const i = item.index;
              const cls = `log-row${i === selected ? ' selected' : ''}${hitSet.has(i) ? ' hit' : ''}${i === current ? ' current' : ''}`;
              return (
                <div key={i} class={cls} data-line={i + 1} style={{ transform: `translateY(${item.start}px)` }}>
                  <a class="ln" href={`#L${i + 1}`} aria-label={`Line ${i + 1}`} onClick={(ev) => selectLine(i, ev)}>
                    {i + 1}
                  </a>
                  <span class="lt">
                    <AnsiLine text={buffer.ansiLine(i)} />
                  </span>
                </div>
              );
            })}
          </div>
        )}
      </div>
    </div>
  );
}
