/**
 * The dashboard's entry: sign-in gate, the top bar and the router. Every
 * view has an address (`/builds`, `/builds/{id}?attempt=N`, `/workers`,
 * `/workers/{id}`, `/queue`, `/tokens`, `/webhooks`,
 * `/webhooks/{id}`); the controller answers each with
 * this page, so reload, back/forward and shared links work.
 */
import { render } from 'preact';
import { lazy, Suspense } from 'preact/compat';
import { useEffect, useState } from 'preact/hooks';
import { Link, Redirect, Route, Switch, useLocation } from 'wouter-preact';
import { paths } from '@buildfleet/protocol';
import { ApiFailure, call } from './api.js';
import { clearToken, getToken, onTokenChange, setToken } from './auth.js';
import { startLive, stopLive, useLiveStatus } from './live.js';
import { BuildsPage } from './pages/builds.js';
import { BuildPage } from './pages/build.js';
import { WorkerPage, WorkersPage } from './pages/workers.js';
// The queue page carries the charting library: loaded when first opened.
const QueuePage = lazy(() => import('./pages/queue.js').then((m) => m.QueuePage));
import { TokensPage } from './pages/tokens.js';
import { WebhookPage, WebhooksPage } from './pages/webhooks.js';
import './styles.css';

function useSignedIn(): boolean {
  const [signedIn, set] = useState(Boolean(getToken()));
  useEffect(() => onTokenChange(() => set(Boolean(getToken()))), []);
  return signedIn;
}

function SignIn() {
  const [value, setValue] = useState('');
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  const submit = async (e: Event) => {
    e.preventDefault();
    const token = value.trim();
    if (!token.startsWith('bfa_')) {
      setError('An API token starts with bfa_.');
      return;
    }
    setBusy(true);
    setError(null);
    // Checked before it is kept: a refused token never signs in, so the form (and its error) stays.
    try {
      await call(`${paths.builds()}?limit=1`, { token });
    } catch (err) {
      setError(err instanceof ApiFailure && err.status === 401 ? 'The controller refused this token.' : String((err as Error).message));
      setBusy(false);
      return;
    }
    setBusy(false);
    setToken(token);
  };
  return (
    <main class="signin">
      <form class="card signin-card" onSubmit={submit}>
        <div class="brand big">
          <span class="logo" aria-hidden="true" />
          buildfleet
        </div>
        <h1>Sign in</h1>
        <p class="muted">
          Paste an API token (<code>bfa_…</code>). <code>npm start</code> printed one, and it is in <code>.buildfleet/credentials.json</code>.
          It is kept for this browser tab only.
        </p>
        <label class="field">
          <span>API token</span>
          <input
            type="password"
            name="token"
            autoComplete="off"
            spellcheck={false}
            value={value}
            onInput={(e) => setValue((e.target as HTMLInputElement).value)}
            autoFocus
          />
        </label>
        {error ? (
          <div class="note error" role="alert">
            {error}
          </div>
        ) : null}
        <button type="submit" class="btn primary wide" disabled={busy || !value.trim()}>
          {busy ? 'Checking…' : 'Sign in'}
        </button>
      </form>
    </main>
  );
}

const NAV = [
  ['/builds', 'Builds'],
  ['/workers', 'Workers'],
  ['/queue', 'Queue'],
  ['/tokens', 'Tokens'],
  ['/webhooks', 'Webhooks'],
] as const;

function TopBar() {
  const [location] = useLocation();
  const status = useLiveStatus();
  const text = { connecting: 'Connecting', live: 'Live', reconnecting: 'Reconnecting', unavailable: 'Not live' }[status];
  return (
    <header class="topbar">
      <Link href="/builds" class="brand" aria-label="buildfleet home">
        <span class="logo" aria-hidden="true" />
        <span class="brand-name">buildfleet</span>
      </Link>
      <nav class="nav" aria-label="Main">
        {NAV.map(([href, label]) => (
          <Link key={href} href={href} class={location.startsWith(href) ? 'active' : ''} aria-current={location.startsWith(href) ? 'page' : undefined}>
            {label}
          </Link>
        ))}
      </nav>
      <span class={`live live-${status}`} role="status" title={`Updates: ${text}`}>
        <span class="dot" aria-hidden="true" />
        <span class="live-text">{text}</span>
      </span>
      <button type="button" class="btn ghost" onClick={() => clearToken()}>
        Sign out
      </button>
    </header>
  );
}

function NotFound() {
  return (
    <div class="empty">
      Nothing here. <Link href="/builds">Go to the builds</Link>.
    </div>
  );
}

function App() {
  const signedIn = useSignedIn();
  useEffect(() => {
    if (signedIn) startLive();
    else stopLive();
  }, [signedIn]);
  if (!signedIn) return <SignIn />;
  return (
    <>
      <TopBar />
      <main class="content" id="main">
        <Switch>
          <Route path="/">
            <Redirect to="/builds" replace />
          </Route>
          <Route path="/builds" component={BuildsPage} />
          <Route path="/builds/:id" component={BuildPage} />
          <Route path="/workers" component={WorkersPage} />
          <Route path="/workers/:id" component={WorkerPage} />
          <Route path="/queue">
            <Suspense fallback={<div class="empty">Loading…</div>}>
              <QueuePage />
            </Suspense>
          </Route>
          <Route path="/tokens" component={TokensPage} />
          <Route path="/webhooks" component={WebhooksPage} />
          <Route path="/webhooks/:id" component={WebhookPage} />
          <Route component={NotFound} />
        </Switch>
      </main>
    </>
  );
}

render(<App />, document.getElementById('app')!);
