/** Who a build runs as when the worker is root. */
import { describe, expect, it } from 'vitest';
import { resolveBuildUser } from '../../src/sandbox/index.js';

const PASSWD = 'root:x:0:0:root:/root:/bin/bash\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\nci:x:1500:1600::/home/ci:/bin/sh\n';

describe('resolveBuildUser', () => {
  it('a name from /etc/passwd, or uid[:gid]', () => {
    expect(resolveBuildUser('ci', PASSWD)).toEqual({ name: 'ci', uid: 1500, gid: 1600 });
    expect(resolveBuildUser('2000', PASSWD)).toEqual({ name: '2000', uid: 2000, gid: 2000 });
    expect(resolveBuildUser('2000:3000', PASSWD)).toEqual({ name: '2000:3000', uid: 2000, gid: 3000 });
  });

  it('nobody even where /etc/passwd lacks it', () => {
    expect(resolveBuildUser('nobody', 'root:x:0:0::/:/bin/sh\n')).toEqual({ name: 'nobody', uid: 65534, gid: 65534 });
  });

  it('never root, never an unknown name', () => {
    expect(() => resolveBuildUser('root', PASSWD)).toThrow(/never run as root/);
    expect(() => resolveBuildUser('0', PASSWD)).toThrow(/never run as root/);
    expect(() => resolveBuildUser('1000:0', PASSWD)).toThrow(/never run as root/);
    expect(() => resolveBuildUser('ghost', PASSWD)).toThrow(/no user "ghost"/);
  });
});
