export type * from './store/types.js';
export type * from './blobs/types.js';
