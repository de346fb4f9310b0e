/**
 * `/tokens`: enrollment tokens. A new token is shown once, with the command
 * line that starts a worker with it; the list shows use and expiry; revoke
 * asks first.
 */
import { useState } from 'preact/hooks';
import type { EnrollmentToken } from '@buildfleet/protocol';
import { api } from '../api.js';
import { ms } from '../format.js';
import { useLoad } from '../components/load.js';
import { ConfirmButton } from '../components/confirm.js';
import { CopyButton, Empty, ErrorNote, PageHeader, RelTime, useNow } from '../components/ui.js';

function tokenState(t: EnrollmentToken, now: number): string {
  if (t.revoked) return 'revoked';
  const exp = ms(t.expiresAt);
  if (exp !== null && exp <= now) return 'expired';
  if (t.maxUses !== null && t.uses >= t.maxUses) return 'used up';
  return 'active';
}

/** The shell line that starts a worker against this controller with `token`. */
export function workerCommand(token: string, origin: string): string {
  return `BUILDFLEET_CONTROLLER_URL=${origin} BUILDFLEET_ENROLLMENT_TOKEN=${token} BUILDFLEET_LABELS=linux buildfleet worker`;
}

export function TokensPage() {
  const tokens = useLoad<EnrollmentToken[]>((signal) => api.listTokens(signal), []);
  const [created, setCreated] = useState<EnrollmentToken | null>(null);
  const [error, setError] = useState<unknown>(null);
  const [description, setDescription] = useState('');
  const [hours, setHours] = useState('');
  const [maxUses, setMaxUses] = useState('');
  const now = useNow();

  const create = async (e: Event) => {
    e.preventDefault();
    setError(null);
    try {
      const body: { description?: string; expiresAt?: string; maxUses?: number } = {};
      if (description.trim()) body.description = description.trim();
      if (hours) body.expiresAt = new Date(Date.now() + Number(hours) * 3_600_000).toISOString();
      if (maxUses) body.maxUses = Number(maxUses);
      const t = await api.createToken(body);
      setCreated(t);
      setDescription('');
      setHours('');
      setMaxUses('');
      tokens.reload();
    } catch (err) {
      setError(err);
    }
  };

  const list = [...(tokens.data ?? [])].reverse();
  const command = created?.token ? workerCommand(created.token, location.origin) : '';

  return (
    <>
      <PageHeader title="Enrollment tokens" sub="A worker registers once with one of these, then keeps its own credentials." />
      <section class="card" aria-label="New enrollment token">
        <div class="section-head">
          <h2>New token</h2>
        </div>
        <form class="filters" onSubmit={create}>
          <label class="field grow">
            <span>Description</span>
            <input value={description} placeholder="build hosts in rack 4" onInput={(e) => setDescription((e.target as HTMLInputElement).value)} />
          </label>
          <label class="field">
            <span>Expires after (hours)</span>
            <input type="number" min="1" inputMode="numeric" value={hours} placeholder="never" onInput={(e) => setHours((e.target as HTMLInputElement).value)} />
          </label>
          <label class="field">
            <span>Uses</span>
            <input type="number" min="1" inputMode="numeric" value={maxUses} placeholder="unlimited" onInput={(e) => setMaxUses((e.target as HTMLInputElement).value)} />
          </label>
          <div class="field-actions">
            <button type="submit" class="btn primary">
              Create token
            </button>
          </div>
        </form>
        <ErrorNote error={error} />
        {created?.token ? (
          <div class="secret" role="status">
            <p>
              <strong>Copy this token now:</strong> it is not shown again.
            </p>
            <div class="copy-line">
              <code class="mono" data-testid="new-token">
                {created.token}
              </code>
              <CopyButton text={created.token} label="Copy the token" />
            </div>
            <p class="muted small">Start a worker with it (on the build machine, from a checkout of buildfleet):</p>
            <div class="copy-line">
              <code class="mono" data-testid="worker-command">
                {command}
              </code>
              <CopyButton text={command} label="Copy the worker command" />
            </div>
          </div>
        ) : null}
      </section>
      <ErrorNote error={tokens.error} />
      <section class="card table-card" aria-label="Enrollment tokens">
        <table class="table tokens-table">
          <thead>
            <tr>
              <th scope="col">Description</th>
              <th scope="col">State</th>
              <th scope="col" class="num">Uses</th>
              <th scope="col">Created</th>
              <th scope="col">Expires</th>
              <th scope="col">
                <span class="sr-only">Actions</span>
              </th>
            </tr>
          </thead>
          <tbody>
            {list.map((t) => {
              const state = tokenState(t, now);
              return (
                <tr key={t.id} data-token-id={t.id}>
                  <td class="cell-main" data-label="Description">
                    {t.description ?? <span class="muted">(no description)</span>}
                    <div class="muted small mono">{t.id}</div>
                  </td>
                  <td data-label="State">
                    <span class={`badge tk-${state.replace(' ', '-')}`}>{state}</span>
                  </td>
                  <td class="num" data-label="Uses">
                    {t.uses}
                    {t.maxUses !== null ? ` / ${t.maxUses}` : ''}
                  </td>
                  <td data-label="Created">
                    <RelTime iso={t.createdAt} now={now} />
                  </td>
                  <td data-label="Expires">{t.expiresAt ? <RelTime iso={t.expiresAt} now={now} /> : <span class="muted">never</span>}</td>
                  <td data-label="">
                    {t.revoked ? null : (
                      <ConfirmButton
                        label="Revoke"
                        ariaLabel={`Revoke ${t.description ?? `token ${t.id}`}`}
                        title="Revoke this enrollment token?"
                        confirmLabel="Revoke token"
                        danger
                        onConfirm={async () => {
                          await api.revokeToken(t.id);
                          tokens.reload();
                        }}
                      >
                        No new worker can register with it. Workers that already registered keep working.
                      </ConfirmButton>
                    )}
                  </td>
                </tr>
              );
            })}
          </tbody>
        </table>
        {tokens.data && list.length === 0 ? <Empty>No enrollment tokens.</Empty> : null}
      </section>
    </>
  );
}
