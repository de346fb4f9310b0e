/**
 * Waiting for a condition instead of sleeping: the one helper lives with the
 * controller's test support; worker tests use the same.
 */
export { once, waitFor, type WaitOptions } from '../../../controller/test/support/wait.js';
