/**
 * `/webhooks` and `/webhooks/{id}`: subscriptions to build events and each
 * one's delivery log (docs/protocol.md "Webhooks"). A new webhook's signing
 * secret is shown once; deleting asks first. The delivery log re-reads when
 * a build changes (a change is what makes deliveries) and on request.
 */
import { useState } from 'preact/hooks';
import { Link, useLocation, useParams } from 'wouter-preact';
import { WEBHOOK_EVENTS, type Webhook, type WebhookDelivery, type WebhookEventType } from '@buildfleet/protocol';
import { api } from '../api.js';
import { shortId } from '../format.js';
import { useLoad } from '../components/load.js';
import { useLive } from '../live.js';
import { ConfirmButton } from '../components/confirm.js';
import { CopyButton, Empty, ErrorNote, PageHeader, RelTime, useNow } from '../components/ui.js';

export function WebhooksPage() {
  const hooks = useLoad<Webhook[]>((signal) => api.listWebhooks(signal), []);
  const [url, setUrl] = useState('');
  const [description, setDescription] = useState('');
  const [events, setEvents] = useState<WebhookEventType[]>(['build.finished']);
  const [created, setCreated] = useState<{ webhook: Webhook; secret: string } | null>(null);
  const [error, setError] = useState<unknown>(null);
  const now = useNow();

  const toggle = (e: WebhookEventType, on: boolean) => setEvents((cur) => (on ? [...cur, e] : cur.filter((x) => x !== e)));
  const create = async (ev: Event) => {
    ev.preventDefault();
    setError(null);
    try {
      const r = await api.createWebhook({ url: url.trim(), events, ...(description.trim() ? { description: description.trim() } : {}) });
      setCreated(r);
      setUrl('');
      setDescription('');
      hooks.reload();
    } catch (err) {
      setError(err);
    }
  };
  const list = hooks.data ?? [];

  return (
    <>
      <PageHeader title="Webhooks" sub="Build events POSTed to your URLs, signed with each webhook's secret, retried for a day." />
      <section class="card" aria-label="New webhook">
        <div class="section-head">
          <h2>New webhook</h2>
        </div>
        <form class="filters" onSubmit={create}>
          <label class="field grow">
            <span>URL</span>
            <input type="url" required value={url} placeholder="https://ci.example.com/hooks/buildfleet" onInput={(e) => setUrl((e.target as HTMLInputElement).value)} />
          </label>
          <label class="field grow">
            <span>Description</span>
            <input value={description} placeholder="chat notifications" onInput={(e) => setDescription((e.target as HTMLInputElement).value)} />
          </label>
          <fieldset class="field checks">
            <legend>Events</legend>
            {WEBHOOK_EVENTS.map((e) => (
              <label key={e} class="check">
                <input type="checkbox" checked={events.includes(e)} onChange={(ev) => toggle(e, (ev.target as HTMLInputElement).checked)} />
                <span class="mono">{e}</span>
              </label>
            ))}
          </fieldset>
          <div class="field-actions">
            <button type="submit" class="btn primary" disabled={!url.trim() || events.length === 0}>
              Add webhook
            </button>
          </div>
        </form>
        <ErrorNote error={error} />
        {created ? (
          <div class="secret" role="status">
            <p>
              <strong>Copy the signing secret now:</strong> it is not shown again. Receivers check <code>X-Buildfleet-Signature</code> with it.
            </p>
            <div class="copy-line">
              <code class="mono" data-testid="webhook-secret">
                {created.secret}
              </code>
              <CopyButton text={created.secret} label="Copy the signing secret" />
            </div>
          </div>
        ) : null}
      </section>
      <ErrorNote error={hooks.error} />
      <section class="card table-card" aria-label="Webhooks">
        <table class="table">
          <thead>
            <tr>
              <th scope="col">URL</th>
              <th scope="col">Events</th>
              <th scope="col">Created</th>
            </tr>
          </thead>
          <tbody>
            {list.map((h) => (
              <tr key={h.id} data-webhook-id={h.id}>
                <td class="cell-main" data-label="URL">
                  <Link href={`/webhooks/${h.id}`} class="mono wrap">
                    {h.url}
                  </Link>
                  {h.description ? <div class="muted small">{h.description}</div> : null}
                </td>
                <td data-label="Events" class="mono small">
                  {h.events.join(', ')}
                </td>
                <td data-label="Created">
                  <RelTime iso={h.createdAt} now={now} />
                </td>
              </tr>
            ))}
          </tbody>
        </table>
        {hooks.data && list.length === 0 ? <Empty>No webhooks.</Empty> : null}
      </section>
    </>
  );
}

function deliveryResult(d: WebhookDelivery): string {
  if (d.lastStatusCode !== null) return `HTTP ${d.lastStatusCode}`;
  return d.lastError ?? (d.attempts === 0 ? 'not tried yet' : 'no answer');
}

export function WebhookPage() {
  const { id } = useParams<{ id: string }>();
  const [, navigate] = useLocation();
  const hooks = useLoad<Webhook[]>((signal) => api.listWebhooks(signal), []);
  const deliveries = useLoad<WebhookDelivery[]>((signal) => api.listDeliveries(id, signal), [id]);
  const now = useNow();
  useLive((e) => {
    if (e.type === 'hello' || e.type === 'build') deliveries.reload();
  });
  const hook = hooks.data?.find((h) => h.id === id);
  const list = deliveries.data ?? [];

  return (
    <>
      <nav class="crumbs" aria-label="Breadcrumb">
        <Link href="/webhooks">Webhooks</Link> <span aria-hidden="true">/</span> <span>{hook ? hook.url : shortId(id)}</span>
      </nav>
      <PageHeader title={hook?.description ?? 'Webhook'} sub={hook ? <span class="mono wrap">{hook.url}</span> : undefined}>
        <button type="button" class="btn" onClick={() => deliveries.reload()}>
          Refresh
        </button>
        {hook ? (
          <ConfirmButton
            label="Delete"
            ariaLabel={`Delete the webhook to ${hook.url}`}
            title="Delete this webhook?"
            confirmLabel="Delete webhook"
            danger
            onConfirm={async () => {
              await api.deleteWebhook(id);
              navigate('/webhooks');
            }}
          >
            No more events are sent to it, and its delivery log is deleted with it.
          </ConfirmButton>
        ) : null}
      </PageHeader>
      <ErrorNote error={hooks.error ?? deliveries.error} />
      {hooks.data && !hook ? <Empty>No such webhook: it may have been deleted.</Empty> : null}
      <section class="card table-card" aria-label="Deliveries">
        <div class="section-head">
          <h2>Deliveries</h2>
          <span class="muted small">newest first, the last 100</span>
        </div>
        <table class="table deliveries-table">
          <thead>
            <tr>
              <th scope="col">Event</th>
              <th scope="col">Build</th>
              <th scope="col">State</th>
              <th scope="col">Last try</th>
              <th scope="col" class="num">Tries</th>
              <th scope="col">Next try</th>
            </tr>
          </thead>
          <tbody>
            {list.map((d) => (
              <tr key={d.id} data-delivery-id={d.id}>
                <td class="mono small" data-label="Event">
                  {d.eventType}
                  <div class="muted">{shortId(d.eventId)}</div>
                </td>
                <td data-label="Build">
                  <Link href={`/builds/${d.buildId}`} class="mono">
                    {shortId(d.buildId)}
                  </Link>
                </td>
                <td data-label="State">
                  <span class={`badge dl-${d.state}`}>{d.state}</span>
                </td>
                <td data-label="Last try">
                  {d.lastAttemptAt ? (
                    <>
                      <span class="mono">{deliveryResult(d)}</span>
                      {d.lastDurationMs !== null ? <span class="muted"> in {d.lastDurationMs} ms</span> : null}
                      <div class="muted small">
                        <RelTime iso={d.lastAttemptAt} now={now} />
                      </div>
                    </>
                  ) : (
                    <span class="muted">not tried yet</span>
                  )}
                </td>
                <td class="num" data-label="Tries">
                  {d.attempts}
                </td>
                <td data-label="Next try">{d.state === 'pending' && d.nextAttemptAt ? <RelTime iso={d.nextAttemptAt} now={now} /> : <span class="muted">–</span>}</td>
              </tr>
            ))}
          </tbody>
        </table>
        {deliveries.data && list.length === 0 ? <Empty>No deliveries yet: they appear when a subscribed event happens.</Empty> : null}
      </section>
    </>
  );
}
