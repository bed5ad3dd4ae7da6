/*
 * flashgate proof of work, for browsers (served as GET /flashgate-pow.js).
 *
 *   <script src="/flashgate-pow.js"></script>
 *   const header = await flashgatePow.solve({
 *     queue: 'checkout',                               // optional
 *     onProgress: (tried, expected) => { ... },        // optional
 *   });
 *   await fetch('/checkout', {method: 'POST', headers: {'Flashgate-Pow': header}, body});
 *
 * solve() fetches GET /challenge from the origin this script was loaded
 * from, then finds a nonce whose SHA-256(seed + "." + nonce) has the
 * challenge's leading zero bits, in a Web Worker (this same file, so a CSP
 * of `script-src 'self'; worker-src 'self'` is enough) with Web Crypto,
 * reporting the hashes tried and the 2^difficulty expected on average. It
 * resolves to the Flashgate-Pow header value, good for one admission. A
 * page that cannot start the worker (another origin) solves on its own
 * thread instead.
 */
(function (scope) {
  'use strict';

  // Hashes in flight at once: Web Crypto is asynchronous, one digest per
  // promise; a batch keeps it busy and reports progress once per batch.
  var BATCH = 256;

  function zeroBits(bytes) {
    var n = 0;
    for (var i = 0; i < bytes.length; i++) {
      if (bytes[i] === 0) { n += 8; continue; }
      return n + Math.clz32(bytes[i]) - 24;
    }
    return n;
  }

  // Counts nonces up from 0 until one meets `difficulty`; calls
  // progress(tried) after each batch; resolves to "seed.nonce".
  function search(seed, difficulty, progress) {
    var encoder = new TextEncoder();
    var next = 0;
    function batch() {
      var digests = [];
      for (var i = 0; i < BATCH; i++) {
        digests.push(crypto.subtle.digest('SHA-256', encoder.encode(seed + '.' + (next + i))));
      }
      return Promise.all(digests).then(function (hashes) {
        for (var i = 0; i < hashes.length; i++) {
          if (zeroBits(new Uint8Array(hashes[i])) >= difficulty) {
            progress(next + i + 1);
            return seed + '.' + (next + i);
          }
        }
        next += BATCH;
        progress(next);
        return batch();
      });
    }
    return batch();
  }

  // Inside the worker: solve what the page posts.
  if (typeof document === 'undefined') {
    scope.onmessage = function (e) {
      search(e.data.seed, e.data.difficulty, function (tried) {
        scope.postMessage({ tried: tried });
      }).then(function (found) {
        scope.postMessage({ found: found });
      });
    };
    return;
  }

  var script = document.currentScript && document.currentScript.src;
  var origin = script ? new URL(script).origin : location.origin;

  function challenge(queue) {
    var url = new URL('/challenge', origin);
    if (queue) url.searchParams.set('queue', queue);
    return fetch(url, { cache: 'no-store', credentials: 'same-origin' }).then(function (r) {
      if (!r.ok) throw new Error('flashgate challenge: HTTP ' + r.status);
      return r.json();
    });
  }

  function work(c, onProgress) {
    var expected = Math.pow(2, c.difficulty);
    var report = function (tried) { if (onProgress) onProgress(tried, expected); };
    if (c.difficulty === 0) return Promise.resolve(c.seed + '.0');
    var worker = null;
    try {
      if (script && new URL(script).origin === location.origin) worker = new Worker(script);
    } catch (e) {
      worker = null;
    }
    if (!worker) return search(c.seed, c.difficulty, report);
    return new Promise(function (resolve, reject) {
      worker.onmessage = function (e) {
        if (e.data.found) {
          worker.terminate();
          resolve(e.data.found);
        } else {
          report(e.data.tried);
        }
      };
      worker.onerror = function (e) {
        worker.terminate();
        reject(new Error('flashgate proof of work: ' + (e.message || 'the worker failed')));
      };
      worker.postMessage({ seed: c.seed, difficulty: c.difficulty });
    });
  }

  scope.flashgatePow = {
    // Fetches a challenge and solves it: the Flashgate-Pow header value.
    solve: function (options) {
      var o = options || {};
      return challenge(o.queue).then(function (c) { return work(c, o.onProgress); });
    },
    challenge: challenge,
    work: work,
  };
})(self);
