/** Node-only helpers shared by the worker and the controller (not part of the wire contract). */
export { writeFileDurable } from './durable-file.js';
export { CaFileError, controllerFetch, readCaFile, type FetchLike } from './ca-fetch.js';
