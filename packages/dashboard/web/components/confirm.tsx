/**
 * A button that asks before it acts: a modal <dialog> (focus trapped, Esc
 * closes) with the consequence spelled out and the action named on the
 * confirming button.
 */
import type { ComponentChildren } from 'preact';
import { useRef, useState } from 'preact/hooks';
import { errorText } from './ui.js';

export interface ConfirmButtonProps {
  /** The button's text (its accessible name unless `ariaLabel` says more). */
  label: string;
  /** A fuller accessible name when the text alone is ambiguous (a button per table row). */
  ariaLabel?: string;
  title: string;
  children: ComponentChildren;
  /** The confirming button's text, e.g. "Cancel build". */
  confirmLabel: string;
  danger?: boolean;
  disabled?: boolean;
  onConfirm(): Promise<unknown>;
}

export function ConfirmButton(props: ConfirmButtonProps) {
  const dialog = useRef<HTMLDialogElement>(null);
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<string | null>(null);
  const open = () => {
    setError(null);
    dialog.current?.showModal();
  };
  const confirm = async (ev: Event) => {
    ev.preventDefault();
    setBusy(true);
    setError(null);
    try {
      await props.onConfirm();
      dialog.current?.close();
    } catch (err) {
      setError(errorText(err));
    } finally {
      setBusy(false);
    }
  };
  return (
    <>
      <button type="button" class={`btn${props.danger ? ' danger' : ''}`} disabled={props.disabled} onClick={open} aria-label={props.ariaLabel}>
        {props.label}
      </button>
      <dialog ref={dialog} class="confirm" aria-label={props.title}>
        <form method="dialog" onSubmit={confirm}>
          <h2>{props.title}</h2>
          <div class="confirm-body">{props.children}</div>
          {error ? (
            <div class="note error" role="alert">
              {error}
            </div>
          ) : null}
          <div class="confirm-actions">
            <button type="button" class="btn" onClick={() => dialog.current?.close()}>
              Keep it
            </button>
            <button type="submit" class={`btn ${props.danger ? 'danger' : 'primary'}`} disabled={busy}>
              {busy ? 'Working…' : props.confirmLabel}
            </button>
          </div>
        </form>
      </dialog>
    </>
  );
}
