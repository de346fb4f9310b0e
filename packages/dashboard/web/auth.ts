/**
 * The API token the dashboard sends as a bearer. It lives in sessionStorage:
 * asked once per browser session (tab), gone when the session ends, never in
 * localStorage, never in a URL.
 */
const KEY = 'buildfleet.apiToken';
const listeners = new Set<() => void>();

export function getToken(): string | null {
  try {
    return sessionStorage.getItem(KEY);
  } catch {
    return null;
  }
}

export function setToken(token: string): void {
  sessionStorage.setItem(KEY, token);
  for (const l of listeners) l();
}

export function clearToken(): void {
  sessionStorage.removeItem(KEY);
  for (const l of listeners) l();
}

/** Calls `fn` after every sign-in or sign-out; returns the unsubscribe. */
export function onTokenChange(fn: () => void): () => void {
  listeners.add(fn);
  return () => listeners.delete(fn);
}
