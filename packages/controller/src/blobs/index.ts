export type * from './types.js';
export { CHUNK_BYTES, checkKey } from './common.js';
export { FsBlobStore } from './fs.js';
export { PgBlobStore } from './pg.js';
export { openBlobStore, type BlobStoreOptions, type OpenedBlobStore } from './open.js';
