export * from './errors.js';
export * from './tokens.js';
export * from './states.js';
export * from './clock.js';
export * from './schemas.js';
export * from './paths.js';
export * from './config.js';
export * from './sse.js';
