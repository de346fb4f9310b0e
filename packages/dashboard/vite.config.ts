/**
 * Builds the browser app (web/) into dist/web: index.html plus hashed,
 * immutable assets under assets/. The controller serves them (src/index.ts);
 * nothing is fetched from another origin at run time, and the output has no
 * inline script or style, so it runs under `default-src 'self'`.
 */
import { fileURLToPath } from 'node:url';
import { defineConfig } from 'vite';

export default defineConfig({
  root: fileURLToPath(new URL('./web', import.meta.url)),
  base: '/',
  // The protocol package from its TypeScript source (no build order; only
  // what the app uses is bundled).
  resolve: { alias: { '@buildfleet/protocol': fileURLToPath(new URL('../protocol/src/index.ts', import.meta.url)) } },
  oxc: { jsx: { runtime: 'automatic', importSource: 'preact' } },
  build: {
    outDir: fileURLToPath(new URL('./dist/web', import.meta.url)),
    emptyOutDir: true,
    target: 'es2022',
    // No inline data: URLs (CSP `default-src 'self'` has no `data:`).
    assetsInlineLimit: 0,
    sourcemap: false,
    reportCompressedSize: true,
    modulePreload: { polyfill: false },
  },
});
