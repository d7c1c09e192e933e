// gocept.lockd's API in Node, on hasp's registry component: the same rules,
// the same lock directory and the same messages as `hasp lock` and
// `hasp serve`, since they are the same component.
//
//   npm install && npm run transpile     # jco writes ./hasp/ from the component
//   node lockd.mjs DIR lock RESOURCE CLIENT
//   node lockd.mjs DIR unlock RESOURCE CLIENT
//   node lockd.mjs DIR status RESOURCE
//
// or `import { Lockd } from './lockd.mjs'` (session.mjs does).

import { _setPreopens } from '@bytecodealliance/preview2-shim/filesystem';
import { pathToFileURL } from 'node:url';
import { registry } from './hasp/hasp.js';

/** The error codes that mean "refused by the lock rules" (exit 1). */
const REFUSALS = new Set(['already-locked', 'not-owner', 'not-locked', 'lease-expired', 'busy']);

/** A refusal or failure of the component, with gocept.lockd's message. */
export class LockError extends Error {
  constructor({ code, message }) {
    super(message);
    this.name = 'LockError';
    /** `already-locked`, `not-owner`, `not-locked`, `invalid-input`, `storage`, ... */
    this.code = code.tag;
    /** The holder an `already-locked` or `not-owner` names (`?`: anonymous). */
    this.holder = code.val;
  }

  get refused() {
    return REFUSALS.has(this.code);
  }
}

/** Runs one registry call, turning the component's error into a LockError. */
function call(f) {
  try {
    return f();
  } catch (e) {
    // jco throws a ComponentError whose payload is the WIT `error` record.
    if (e?.payload?.code?.tag !== undefined) {
      throw new LockError(e.payload);
    }
    throw e;
  }
}

/**
 * gocept.lockd's `Lockd(lockdir)`: locks kept in a directory, by resource and
 * client. The directory is the component's one preopen (`/locks`); a process
 * opens one lock directory (preview2-shim's preopens are process-wide).
 */
export class Lockd {
  #registry;

  constructor(lockdir) {
    _setPreopens({ '/locks': lockdir });
    this.#registry = call(() => registry.Registry.open('/locks'));
  }

  /** Locks `resource` for `client`; throws `Resource already locked by '...'`. */
  lock(resource, client) {
    const grant = call(() =>
      this.#registry.lock(resource, { client, lockParents: true, lockChildren: true }),
    );
    return grant.holder.fencing;
  }

  /** Unlocks `resource` held by `client`; throws when another holds it or none does. */
  unlock(resource, client) {
    call(() => this.#registry.unlock(resource, { tag: 'client', val: client }));
  }

  /** Who holds `resource`: a client id, `?` for an anonymous lock, or null. */
  status(resource) {
    const holder = call(() => this.#registry.status(resource));
    return holder === undefined ? null : (holder.client ?? '?');
  }
}

/** The command line: exit 0 done, 1 refused, 2 anything else, like `hasp`. */
function main([dir, command, resource, client]) {
  const usage = 'usage: node lockd.mjs DIR (lock|unlock RESOURCE CLIENT | status RESOURCE)';
  try {
    if (dir === undefined || resource === undefined) {
      throw new Error(usage);
    }
    const lockd = new Lockd(dir);
    if (command === 'status') {
      const holder = lockd.status(resource);
      if (holder !== null) {
        console.log(holder);
      }
    } else if ((command === 'lock' || command === 'unlock') && client !== undefined) {
      lockd[command](resource, client);
    } else {
      throw new Error(usage);
    }
    return 0;
  } catch (e) {
    console.error(e.message);
    return e instanceof LockError && e.refused ? 1 : 2;
  }
}

if (import.meta.url === pathToFileURL(process.argv[1]).href) {
  process.exitCode = main(process.argv.slice(2));
}
