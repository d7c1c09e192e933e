// gocept.lockd's README session, line by line, on hasp's registry component
// in Node (see lockd.mjs). `node session.mjs` uses a fresh temporary
// directory; `node session.mjs DIR` a lock directory you name.

import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Lockd } from './lockd.mjs';

const given = process.argv[2];
const lockdir = given ?? mkdtempSync(join(tmpdir(), 'hasp-node-'));
const daemon = new Lockd(lockdir);
let checks = 0;
const check = (f) => {
  f();
  checks += 1;
};

// Resources are identified by a string, and so are the clients locking them.
check(() => assert.equal(typeof daemon.lock('resource1', 'client1'), 'bigint'));
// Once a resource is locked, it cannot be locked again.
check(() =>
  assert.throws(() => daemon.lock('resource1', 'client2'), {
    name: 'LockError',
    code: 'already-locked',
    holder: 'client1',
    message: "Resource already locked by 'client1'",
  }),
);
// Other resources can be locked in parallel.
check(() => daemon.lock('resource2', 'client2'));
// Clients other than the one who locked a resource cannot unlock it.
check(() =>
  assert.throws(() => daemon.unlock('resource1', 'client2'), {
    code: 'not-owner',
    message: "Resource locked by 'client1' cannot be unlocked by 'client2'",
  }),
);
// The client who locked the resource can unlock it again...
check(() => daemon.unlock('resource1', 'client1'));
// ...but not a second time.
check(() =>
  assert.throws(() => daemon.unlock('resource1', 'client1'), {
    code: 'not-locked',
    message: 'Resource not locked',
  }),
);
// Who holds what, as Locker's dohaz tells it.
check(() => assert.equal(daemon.status('resource1'), null));
check(() => assert.equal(daemon.status('resource2'), 'client2'));
// hasp's locks are hierarchical: a lock on a child keeps the parent.
check(() => daemon.lock('tree/leaf', 'client3'));
check(() =>
  assert.throws(() => daemon.lock('tree', 'client4'), {
    message: "Resource already locked by 'client3'",
  }),
);
check(() => daemon.unlock('tree/leaf', 'client3'));
check(() => daemon.unlock('resource2', 'client2'));

if (given === undefined) {
  rmSync(lockdir, { recursive: true });
}
console.log(`gocept.lockd session in Node: ${checks} passed, 0 failed`);
