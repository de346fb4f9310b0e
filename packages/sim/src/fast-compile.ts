/**
 * Speed, not behaviour: every simulated controller (re)start builds a new
 * fastify app, and fastify compiles the same route schemas again each time
 * (fast-json-stringify serializers, ajv validators): most of a run's CPU.
 * This memoizes both compilers for this process, keyed by the schema's JSON
 * (and the serializer's options), so the second app onwards reuses the
 * compiled functions. The functions are pure; the controller's behaviour is
 * unchanged. Must be imported before fastify is.
 */
import { createRequire } from 'node:module';
import path from 'node:path';

const fromController = createRequire(path.resolve(import.meta.dirname, '../../controller/package.json'));

function patch(): void {
  const fastifyDir = fromController.resolve('fastify/package.json').replace(/package\.json$/, 'x.js');
  const fromFastify = createRequire(fastifyDir);

  // Serializers: @fastify/fast-json-stringify-compiler calls require('fast-json-stringify')(schema, opts).
  const fjsCompilerPath = fromFastify.resolve('@fastify/fast-json-stringify-compiler');
  const fromFjsCompiler = createRequire(fjsCompilerPath);
  const fjsPath = fromFjsCompiler.resolve('fast-json-stringify');
  const fjs = fromFjsCompiler(fjsPath) as ((schema: unknown, opts: unknown) => unknown) & Record<string, unknown>;
  const cache = new Map<string, unknown>();
  const memo = Object.assign((schema: unknown, opts: unknown) => {
    const key = JSON.stringify(schema) + '\u0000' + JSON.stringify(opts);
    let fn = cache.get(key);
    if (!fn) cache.set(key, (fn = fjs(schema, opts)));
    return fn;
  }, fjs);
  const mod = fromFjsCompiler.cache[fjsPath];
  if (mod) mod.exports = memo;
  // The compiler module may be loaded already (it captured the original); reload it so it captures ours.
  delete fromFastify.cache[fjsCompilerPath];
  const standalone = fjsCompilerPath.replace(/index\.js$/, 'standalone.js');
  delete fromFastify.cache[standalone];

  // Validators: @fastify/ajv-compiler's ValidatorCompiler#buildValidatorFunction.
  const ajvCompilerPath = fromFastify.resolve('@fastify/ajv-compiler');
  const vcPath = ajvCompilerPath.replace(/index\.js$/, 'lib/validator-compiler.js');
  const VC = fromFastify(vcPath) as { prototype: { buildValidatorFunction: (this: unknown, a: { schema: unknown }) => unknown } };
  const original = VC.prototype.buildValidatorFunction;
  const vcache = new Map<string, unknown>();
  VC.prototype.buildValidatorFunction = function (this: unknown, a: { schema: unknown }) {
    // Every app of the simulation uses the same ajv options (buildApp's), so the schema is the key.
    const key = JSON.stringify(a.schema);
    let fn = vcache.get(key);
    if (!fn) vcache.set(key, (fn = original.call(this, a)));
    return fn;
  };
}

/**
 * Memory, not behaviour: every app's metrics call prom-client's
 * collectDefaultMetrics, whose event-loop monitor and GC observer are never
 * released and keep each closed app's registry reachable. The simulation
 * never reads process metrics; here they are not collected.
 */
function noDefaultMetrics(): void {
  const promPath = fromController.resolve('prom-client');
  const prom = fromController(promPath) as { collectDefaultMetrics: unknown };
  prom.collectDefaultMetrics = Object.assign(() => undefined, { metricsList: [] });
}

try {
  noDefaultMetrics();
} catch (err) {
  if (process.env.SIM_DEBUG) console.error('sim: default metrics still collected:', err);
}

try {
  patch();
} catch (err) {
  // Only slower without it.
  if (process.env.SIM_DEBUG) console.error('sim: schema compile cache not installed:', err);
}
