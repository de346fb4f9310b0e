/**
 * Input rules the schemas alone cannot state, and the schema compiler:
 * - bodies are validated strictly (no type coercion: `labels: "a"`,
 *   `attempt: null` and `"1"` are refused); path and query parameters,
 *   which arrive as text, are coerced to the schema's numbers;
 * - no JSON string or key may contain NUL (U+0000), which PostgreSQL text
 *   columns refuse; binary data travels as base64;
 * - JSON nests at most `maxDepth` levels (a deeply nested body costs seconds
 *   of CPU to parse and overflows the stack when serialized again);
 * - no `__proto__` key (a merge elsewhere must never meet one).
 */
import type { FastifyRequest } from 'fastify';
import AjvCompiler from '@fastify/ajv-compiler';
import { ApiError } from '@buildfleet/protocol';

type ValidatorFactory = AjvCompiler.ValidatorFactory;
type CompilerOptions = Parameters<ValidatorFactory>[1];

/**
 * fastify's `schemaController.compilersFactory.buildValidator`: one ajv for
 * bodies without coercion and one for params, query and headers that turns
 * their text into the schema's types.
 */
export const buildValidator: ValidatorFactory = (externalSchemas, options) => {
  const factory = AjvCompiler();
  const custom = options?.customOptions ?? {};
  const strict = factory(externalSchemas, { ...options, customOptions: { ...custom, coerceTypes: false } } as CompilerOptions);
  const coercing = factory(externalSchemas, { ...options, customOptions: { ...custom, coerceTypes: true } } as CompilerOptions);
  return (route) => (route.httpPart === 'body' ? strict(route) : coercing(route));
};

/**
 * Whether JSON `text` nests arrays and objects deeper than `max` levels,
 * decided before parsing. Jumps between brackets and quotes with native
 * searches, so a long string (a base64 log chunk) costs one scan.
 * Malformed text answers false (the parser refuses it).
 */
export function jsonTooDeep(text: string, max: number): boolean {
  const special = /["[\]{}]/g;
  let depth = 0;
  for (let m = special.exec(text); m; m = special.exec(text)) {
    const c = m[0];
    if (c === '"') {
      let from = m.index + 1;
      for (;;) {
        const q = text.indexOf('"', from);
        if (q < 0) return false;
        let backslashes = 0;
        for (let b = q - 1; b > m.index && text.charCodeAt(b) === 92; b--) backslashes++;
        from = q + 1;
        if (backslashes % 2 === 0) break;
      }
      special.lastIndex = from;
    } else if (c === '[' || c === '{') {
      if (++depth > max) return true;
    } else {
      depth--;
    }
  }
  return false;
}

/**
 * The first problem of a parsed JSON value: a string or key with NUL, a
 * `__proto__` key, or nesting deeper than `maxDepth` (a value from
 * elsewhere than `JSON.parse`). Undefined when it is fine. Iterative: a
 * deep value cannot overflow the stack here.
 */
export function jsonValueProblem(value: unknown, maxDepth: number, root = 'body'): string | undefined {
  const stack: Array<[unknown, number, string]> = [[value, 0, root]];
  while (stack.length > 0) {
    const [v, depth, where] = stack.pop()!;
    if (typeof v === 'string') {
      if (v.includes('\u0000')) return `${where} contains NUL (U+0000); send binary data as base64`;
      continue;
    }
    if (typeof v !== 'object' || v === null) continue;
    if (depth >= maxDepth) return `${where} nests deeper than ${maxDepth} levels`;
    if (Array.isArray(v)) {
      for (let i = 0; i < v.length; i++) stack.push([v[i], depth + 1, `${where}[${i}]`]);
      continue;
    }
    for (const key of Object.keys(v)) {
      if (key.includes('\u0000')) return `${where} has a key with NUL (U+0000)`;
      if (key === '__proto__') return `${where} has a "__proto__" key`;
      stack.push([(v as Record<string, unknown>)[key], depth + 1, `${where}.${key}`]);
    }
  }
  return undefined;
}

/**
 * Parses JSON text under the rules above; returns the value, or a reason
 * string when it is refused (the caller reports it as 400 in docs/protocol.md's
 * check order).
 */
export function parseJsonChecked(text: string, maxDepth: number, root = 'body'): { value: unknown } | { problem: string } {
  if (jsonTooDeep(text, maxDepth)) return { problem: `${root} nests deeper than ${maxDepth} levels` };
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (err) {
    return { problem: `${root} is not valid JSON: ${(err as Error).message}` };
  }
  const problem = jsonValueProblem(value, maxDepth, root);
  return problem ? { problem } : { value };
}

/**
 * A preHandler for every route: a path parameter that breaks its schema
 * (an id with characters ids never have, too long) is 400 at once, after
 * authentication; and no path or query value may contain NUL or another
 * control character, so none reaches the database.
 */
export async function checkPathAndQuery(request: FastifyRequest): Promise<void> {
  const v = request.validationError as (Error & { validationContext?: string }) | undefined;
  if (v && v.validationContext === 'params') throw new ApiError('VALIDATION_FAILED', v.message);
  for (const [part, values] of [
    ['path', request.params],
    ['query', request.query],
  ] as const) {
    if (typeof values !== 'object' || values === null) continue;
    for (const [name, value] of Object.entries(values as Record<string, unknown>)) {
      // eslint-disable-next-line no-control-regex
      if (typeof value === 'string' && /[\u0000-\u001f\u007f]/.test(value)) {
        throw new ApiError('VALIDATION_FAILED', `${part} parameter ${name === '*' ? 'name' : name} contains a control character`);
      }
    }
  }
}
