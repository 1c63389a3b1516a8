/*
 * dicom_gate.js: the DICOM association gate of dicomsec.hardening's nginx_stream_proxy role.
 *
 * nginx's stream module runs it at the preread phase, before a byte reaches the PACS. It
 * reads the whole A-ASSOCIATE-RQ (PS3.8 9.3.2), checks it against the policy the role
 * rendered into dicom_gate_policy.js, and names a route for the connection:
 *
 *   accept       the listener's upstream (the PACS);
 *   rj-calling   a responder that answers A-ASSOCIATE-RJ 1/1/3 (calling AE not recognized);
 *   rj-called    ... 1/1/7 (called AE not recognized);
 *   rj-identity  ... 1/2/1: rejected-permanent, source "DICOM UL service-provider (ACSE
 *                related function)", as PS3.7 D.3.3.7 prescribes for an identity failure;
 *   rj-version   ... 1/2/2 (protocol version not supported).
 *
 * Bytes that are not a well-formed A-ASSOCIATE-RQ are closed here (s.deny()): a client that
 * does not speak DICOM has no use for a reject, and a malformed request may be an attack on
 * whatever parses it next.
 *
 * nginx config maps the route to a backend per listener, so a listener reaches its own PACS
 * or a local responder and nothing else; an empty route (the gate never decided) maps to a
 * closing responder. On accepted associations js_filter (filter()) removes the user identity
 * sub-item from the request before it leaves, and adds the User Identity server response
 * (0x59) to the PACS's A-ASSOCIATE-AC when the client asked for one, fixing every length.
 *
 * Written for njs 0.7.9 (Debian 12): ES5 syntax, no Buffer latin1, no JWK import (the role
 * converts JWKS to PEM), WebCrypto PBKDF2 with salts of at least 16 bytes. The parser trusts
 * no length: every read is bounded by the PDU, the item and the sub-item that hold it.
 */

import policy from 'dicom_gate_policy.js';

var IDENTITY_NAMES = ['none', 'username', 'username_passcode', 'kerberos', 'saml', 'jwt'];
var REJECTS = {
    'rj-calling': [1, 1, 3],
    'rj-called': [1, 1, 7],
    'rj-identity': [1, 2, 1],
    'rj-version': [1, 2, 2]
};
// The cost of copying: njs hands the preread callback the whole buffer each time bytes arrive,
// allocated for the life of the connection. A request sent in many tiny segments would make
// that quadratic; past this many bytes seen in total the connection is closed.
var MAX_PREREAD_COPY = 2 * 1024 * 1024;
var JWT_ALGORITHMS = {
    RS256: {importAlg: {name: 'RSASSA-PKCS1-v1_5', hash: 'SHA-256'}, verifyAlg: {name: 'RSASSA-PKCS1-v1_5'}},
    ES256: {importAlg: {name: 'ECDSA', namedCurve: 'P-256'}, verifyAlg: {name: 'ECDSA', hash: 'SHA-256'},
            signatureBytes: 64}
};
var B64URL = /^[A-Za-z0-9_-]*$/;

// ---------------------------------------------------------------------------------------
// Policy, compiled once when nginx loads its configuration: a policy error stops `nginx -t`.
// ---------------------------------------------------------------------------------------

function fail(message) {
    throw new Error('dicom_gate policy: ' + message);
}

function parseIp(text) {
    // 16 bytes; IPv4 as IPv4-mapped IPv6, so one comparison serves both families.
    var bytes = [], i;
    if (typeof text !== 'string') {
        return null;
    }
    if (text.indexOf(':') < 0) {
        var quad = text.split('.');
        if (quad.length !== 4) {
            return null;
        }
        for (i = 0; i < 10; i++) {
            bytes.push(0);
        }
        bytes.push(255, 255);
        for (i = 0; i < 4; i++) {
            if (!/^[0-9]{1,3}$/.test(quad[i]) || Number(quad[i]) > 255) {
                return null;
            }
            bytes.push(Number(quad[i]));
        }
        return bytes;
    }
    var tail = [];
    var last = text.lastIndexOf(':');
    if (text.indexOf('.', last) >= 0) {
        var v4 = parseIp(text.slice(last + 1));
        if (v4 === null) {
            return null;
        }
        tail = v4.slice(12);
        text = text.slice(0, last + 1) + '0:0';
    }
    var halves = text.split('::');
    if (halves.length > 2) {
        return null;
    }
    function groups(part) {
        if (part === '') {
            return [];
        }
        var out = [], list = part.split(':');
        for (var j = 0; j < list.length; j++) {
            if (!/^[0-9a-fA-F]{1,4}$/.test(list[j])) {
                return null;
            }
            out.push(parseInt(list[j], 16));
        }
        return out;
    }
    var head = groups(halves[0]);
    var rest = halves.length === 2 ? groups(halves[1]) : [];
    if (head === null || rest === null) {
        return null;
    }
    var missing = 8 - head.length - rest.length;
    if ((halves.length === 1 && missing !== 0) || (halves.length === 2 && missing < 1)) {
        return null;
    }
    var all = head.slice();
    for (i = 0; i < missing; i++) {
        all.push(0);
    }
    all = all.concat(rest);
    for (i = 0; i < 8; i++) {
        bytes.push(all[i] >> 8, all[i] & 255);
    }
    if (tail.length) {
        bytes.splice(12, 4, tail[0], tail[1], tail[2], tail[3]);
    }
    return bytes;
}

function parsePrefix(text) {
    var parts = String(text).split('/');
    var address = parseIp(parts[0]);
    if (address === null || parts.length > 2) {
        fail('source prefix ' + JSON.stringify(text) + ' is not an address or a prefix');
    }
    var v4 = parts[0].indexOf(':') < 0;
    var bits = parts.length === 2 ? Number(parts[1]) : (v4 ? 32 : 128);
    if (!(bits >= 0 && bits <= (v4 ? 32 : 128)) || (parts.length === 2 && !/^[0-9]+$/.test(parts[1]))) {
        fail('source prefix ' + JSON.stringify(text) + ' has a bad length');
    }
    return {address: address, bits: v4 ? bits + 96 : bits};
}

function inPrefix(address, prefix) {
    for (var bit = 0; bit < prefix.bits; bit += 8) {
        var take = Math.min(8, prefix.bits - bit);
        var mask = (0xff << (8 - take)) & 0xff;
        if ((address[bit >> 3] & mask) !== (prefix.address[bit >> 3] & mask)) {
            return false;
        }
    }
    return true;
}

function compile(p) {
    if (!p || p.version !== 1) {
        fail('version 1 expected');
    }
    var modalities = {}, name, i;
    for (name in p.modalities || {}) {
        var m = p.modalities[name];
        modalities[name] = {
            sources: (m.sources || []).map(parsePrefix),
            subjects: m.subjects || []
        };
    }
    var listeners = {};
    for (name in p.listeners || {}) {
        var l = p.listeners[name];
        if (!l.called_aes || !l.called_aes.length) {
            fail('listener ' + name + ' has no called AE');
        }
        var calling = l.calling_aes || Object.keys(modalities);
        for (i = 0; i < calling.length; i++) {
            if (!modalities[calling[i]]) {
                fail('listener ' + name + ' names calling AE ' + calling[i] + ', which is no modality');
            }
        }
        var id = l.identity || {};
        if (id.pass_through && !l.upstream_tls) {
            fail('listener ' + name + ' passes identity through to an upstream without TLS');
        }
        listeners[name] = {
            name: name,
            called: l.called_aes,
            calling: calling,
            maxRequest: l.max_request_bytes || 65530,
            identity: {
                required: id.required !== false,
                types: id.types || [2, 5],
                passThrough: !!id.pass_through
            }
        };
    }
    var jwt = p.jwt || null;
    if (jwt) {
        for (i = 0; i < (jwt.keys || []).length; i++) {
            if (!JWT_ALGORITHMS[jwt.keys[i].alg]) {
                fail('JWT key ' + jwt.keys[i].kid + ' has algorithm ' + jwt.keys[i].alg);
            }
        }
    }
    return {listeners: listeners, modalities: modalities, users: p.users || {}, jwt: jwt,
            dummy: p.dummy_hash};
}

var POLICY = compile(policy);

// ---------------------------------------------------------------------------------------
// A-ASSOCIATE-RQ parser (PS3.8 9.3.2, PS3.7 D.3.3.7.1)
// ---------------------------------------------------------------------------------------

function aeTitle(b, offset) {
    // AE VR (PS3.5 6.2): default repertoire without backslash and control characters;
    // leading and trailing spaces are not significant.
    var text = '', valid = true;
    for (var i = offset; i < offset + 16; i++) {
        var c = b[i];
        if (c < 0x20 || c > 0x7e || c === 0x5c) {
            valid = false;
            text += '?';
        } else {
            text += String.fromCharCode(c);
        }
    }
    text = text.replace(/^ +| +$/g, '');
    return {text: text, valid: valid && text.length > 0};
}

function closeReason(b) {
    if (b[0] >= 0x02 && b[0] <= 0x07) {
        return 'unexpected-pdu-type';
    }
    if (b[0] === 0x16) {
        return 'tls-on-plain-listener';
    }
    return 'not-dicom';
}

function parseUserInfo(b, start, end, out) {
    var pos = start;
    while (pos < end) {
        if (end - pos < 4) {
            return 'user-information-truncated';
        }
        var type = b[pos], len = b.readUInt16BE(pos + 2), body = pos + 4;
        if (body + len > end) {
            return 'sub-item-length';
        }
        if (type === 0x58) {
            if (out.identity) {
                return 'duplicate-user-identity';
            }
            if (len < 6) {
                return 'user-identity-truncated';
            }
            var plen = b.readUInt16BE(body + 2);
            if (4 + plen + 2 > len) {
                return 'user-identity-length';
            }
            var slen = b.readUInt16BE(body + 4 + plen);
            if (6 + plen + slen !== len) {
                return 'user-identity-length';
            }
            var idType = b[body];
            if (idType < 1 || idType > 5) {
                return 'user-identity-type';
            }
            if (idType !== 2 && slen !== 0) {
                // PS3.7 D.3.3.7.1: the secondary field is only non-empty for type 2.
                return 'user-identity-secondary-field';
            }
            out.identity = {
                type: idType,
                positive: b[body + 1] === 1,
                primary: b.slice(body + 4, body + 4 + plen),
                secondary: b.slice(body + 6 + plen, body + 6 + plen + slen),
                offset: pos,
                length: 4 + len
            };
        }
        pos = body + len;
    }
    return null;
}

function parsePresentationContext(b, start, end, ids) {
    if (end - start < 4) {
        return 'presentation-context-truncated';
    }
    var id = b[start];
    if (id % 2 === 0 || ids[id]) {
        return 'presentation-context-id';
    }
    ids[id] = true;
    var pos = start + 4, abstract = 0, transfer = 0;
    while (pos < end) {
        if (end - pos < 4) {
            return 'presentation-context-truncated';
        }
        var type = b[pos], len = b.readUInt16BE(pos + 2);
        if (pos + 4 + len > end || len === 0 || len > 64) {
            return 'syntax-length';
        }
        if (type === 0x30) {
            abstract++;
        } else if (type === 0x40) {
            transfer++;
        } else {
            return 'presentation-context-sub-item';
        }
        pos += 4 + len;
    }
    return abstract === 1 && transfer >= 1 ? null : 'presentation-context-syntaxes';
}

// Returns {need: true} until the PDU is complete, {close: reason} for what is closed, or the
// request's fields. `max` bounds the PDU length read from the wire before anything else.
function parseRequest(b, max) {
    if (b.length < 1) {
        return {need: true};
    }
    if (b[0] !== 0x01) {
        return {close: closeReason(b)};
    }
    if (b.length < 6) {
        return {need: true};
    }
    var len = b.readUInt32BE(2);
    if (len > max) {
        return {close: 'pdu-too-large'};
    }
    if (len < 68) {
        return {close: 'pdu-too-short'};
    }
    if (b.length < 6 + len) {
        return {need: true};
    }
    if (b.length > 6 + len) {
        // A requestor waits for the A-ASSOCIATE-AC before it sends anything else.
        return {close: 'trailing-bytes'};
    }
    var rq = {
        length: 6 + len,
        version: b.readUInt16BE(6),
        called: aeTitle(b, 10),
        calling: aeTitle(b, 26),
        contexts: 0,
        identity: null,
        userInfoOffset: -1
    };
    var pos = 74, end = 6 + len, app = 0, ids = {}, err;
    while (pos < end) {
        if (end - pos < 4) {
            return {close: 'item-truncated'};
        }
        var type = b[pos], ilen = b.readUInt16BE(pos + 2), body = pos + 4;
        if (body + ilen > end) {
            return {close: 'item-length'};
        }
        if (type === 0x10) {
            if (app++ || ilen === 0 || ilen > 64) {
                return {close: 'application-context'};
            }
        } else if (type === 0x20) {
            err = parsePresentationContext(b, body, body + ilen, ids);
            if (err) {
                return {close: err};
            }
            rq.contexts++;
        } else if (type === 0x50) {
            if (rq.userInfoOffset >= 0) {
                return {close: 'duplicate-user-information'};
            }
            rq.userInfoOffset = pos;
            err = parseUserInfo(b, body, body + ilen, rq);
            if (err) {
                return {close: err};
            }
        } else {
            return {close: 'unknown-item'};
        }
        pos = body + ilen;
    }
    if (!app || !rq.contexts || rq.userInfoOffset < 0) {
        return {close: 'missing-item'};
    }
    return rq;
}

// ---------------------------------------------------------------------------------------
// Identity checks; each resolves to null (accepted) or a reason.
// ---------------------------------------------------------------------------------------

function utf8(buf) {
    // Only text that round-trips is a name: an invalid sequence must not match a user.
    var text = buf.toString('utf8');
    return Buffer.from(text, 'utf8').equals(buf) ? text : null;
}

function equalBytes(a, b) {
    var diff = a.length ^ b.length;
    for (var i = 0; i < a.length && i < b.length; i++) {
        diff |= a[i] ^ b[i];
    }
    return diff === 0;
}

function pbkdf2Check(hash, passcode) {
    // pbkdf2-sha256$<iterations>$<salt, base64>$<key, base64>, as the role's filter writes it.
    var parts = String(hash).split('$');
    if (parts.length !== 4 || parts[0] !== 'pbkdf2-sha256') {
        return Promise.resolve(false);
    }
    var salt = Buffer.from(parts[2], 'base64');
    var expected = Buffer.from(parts[3], 'base64');
    return crypto.subtle.importKey('raw', passcode, 'PBKDF2', false, ['deriveBits'])
        .then(function (key) {
            return crypto.subtle.deriveBits({name: 'PBKDF2', hash: 'SHA-256', salt: salt,
                                             iterations: Number(parts[1])}, key, expected.length * 8);
        })
        .then(function (bits) {
            return equalBytes(Buffer.from(bits), expected);
        });
}

function pemToDer(pem) {
    return Buffer.from(pem.replace(/-----[A-Z ]+-----/g, '').replace(/\s+/g, ''), 'base64');
}

// A failed RSA verification leaves OpenSSL's per-thread error queue filled (njs 0.7.9 does not
// clear it), and nginx's next TLS handshake in this worker then logs an [alert] about a stale
// error. njs drains the queue when it reports a WebCrypto error, so provoke one.
function drainOpenSslErrors() {
    return crypto.subtle.importKey('spki', Buffer.from([0]), JWT_ALGORITHMS.RS256.importAlg, false, ['verify'])
        .then(function () {}, function () {});
}

function jsonPart(part) {
    try {
        var value = JSON.parse(Buffer.from(part, 'base64url').toString('utf8'));
        return value !== null && typeof value === 'object' && !Array.isArray(value) ? value : null;
    } catch (e) {
        return null;
    }
}

// Resolves to {user} or {reason} (and {user, reason} when the signature held but a claim did
// not: only a verified token names its user in the log).
function jwtCheck(token) {
    var J = POLICY.jwt;
    if (!J) {
        return Promise.resolve({reason: 'jwt-not-configured'});
    }
    var text = utf8(token);
    var parts = text === null ? [] : text.split('.');
    if (parts.length !== 3 || !B64URL.test(parts[0]) || !B64URL.test(parts[1]) || !B64URL.test(parts[2])) {
        return Promise.resolve({reason: 'jwt-malformed'});
    }
    var header = jsonPart(parts[0]);
    var claims = jsonPart(parts[1]);
    if (header === null || claims === null || typeof header.alg !== 'string') {
        return Promise.resolve({reason: 'jwt-malformed'});
    }
    // Only the asymmetric algorithms the keys are for: `none` and HMAC (whose "secret" an
    // attacker would take from the public key) never reach a verifier.
    if (!JWT_ALGORITHMS.hasOwnProperty(header.alg)) {
        return Promise.resolve({reason: 'jwt-algorithm-refused'});
    }
    if (header.crit !== undefined) {
        return Promise.resolve({reason: 'jwt-critical-header'});
    }
    var keys = J.keys || [], key = null, i;
    if (header.kid !== undefined) {
        for (i = 0; i < keys.length; i++) {
            if (keys[i].kid === header.kid) {
                key = keys[i];
            }
        }
    } else if (keys.length === 1) {
        key = keys[0];
    }
    if (key === null) {
        return Promise.resolve({reason: 'jwt-unknown-key'});
    }
    if (key.alg !== header.alg) {
        return Promise.resolve({reason: 'jwt-algorithm-mismatch'});
    }
    var algorithm = JWT_ALGORITHMS[key.alg];
    var signature = Buffer.from(parts[2], 'base64url');
    if (algorithm.signatureBytes && signature.length !== algorithm.signatureBytes) {
        return Promise.resolve({reason: 'jwt-bad-signature'});
    }
    return crypto.subtle.importKey('spki', pemToDer(key.pem), algorithm.importAlg, false, ['verify'])
        .then(function (cryptoKey) {
            return crypto.subtle.verify(algorithm.verifyAlg, cryptoKey, signature,
                                        Buffer.from(parts[0] + '.' + parts[1]));
        })
        .then(function (ok) {
            if (!ok) {
                return drainOpenSslErrors().then(function () {
                    return {reason: 'jwt-bad-signature'};
                });
            }
            var user = claims[J.username_claim || 'sub'];
            user = typeof user === 'string' && user.length ? user : '';
            var now = Date.now() / 1000, skew = J.clock_skew || 0;
            if (typeof claims.exp !== 'number') {
                return {user: user, reason: 'jwt-no-expiry'};
            }
            if (now > claims.exp + skew) {
                return {user: user, reason: 'jwt-expired'};
            }
            if (claims.nbf !== undefined && (typeof claims.nbf !== 'number' || now + skew < claims.nbf)) {
                return {user: user, reason: 'jwt-not-yet-valid'};
            }
            if (claims.iat !== undefined && (typeof claims.iat !== 'number' || now + skew < claims.iat)) {
                return {user: user, reason: 'jwt-issued-in-future'};
            }
            if (claims.iss !== J.issuer) {
                return {user: user, reason: 'jwt-wrong-issuer'};
            }
            var aud = typeof claims.aud === 'string' ? [claims.aud] : claims.aud;
            var audiences = J.audiences || [];
            var match = Array.isArray(aud) && aud.some(function (a) { return audiences.indexOf(a) >= 0; });
            if (!match) {
                return {user: user, reason: 'jwt-wrong-audience'};
            }
            return user ? {user: user} : {reason: 'jwt-no-username'};
        }, function () {
            return {reason: 'jwt-bad-signature'};
        });
}

// A name from the wire is looked up among the policy's own users only: "constructor" or
// "__proto__" must not find something an object inherits.
function policyUser(name) {
    return typeof name === 'string' && Object.prototype.hasOwnProperty.call(POLICY.users, name)
        ? POLICY.users[name] : undefined;
}

// Resolves to {user, reason}: reason null means the identity is accepted.
function identityCheck(L, rq) {
    var id = rq.identity;
    if (!id) {
        return Promise.resolve({user: '', reason: L.identity.required ? 'identity-required' : null});
    }
    if (L.identity.types.indexOf(id.type) < 0) {
        return Promise.resolve({user: '', reason: 'identity-type-not-allowed'});
    }
    if (id.primary.length === 0) {
        return Promise.resolve({user: '', reason: 'identity-empty'});
    }
    var checked;
    if (id.type === 1 || id.type === 2) {
        var name = utf8(id.primary);
        var user = name === null ? undefined : policyUser(name);
        var shown = name === null ? '' : name.slice(0, 64);
        if (id.type === 1) {
            checked = Promise.resolve({user: shown, reason: user ? null : 'unknown-user'});
        } else {
            // An unknown user costs the same derivation as a known one: timing names no user.
            var hash = user && user.hash ? user.hash : POLICY.dummy;
            checked = pbkdf2Check(hash, id.secondary).then(function (ok) {
                var reason = null;
                if (!user) {
                    reason = 'unknown-user';
                } else if (!user.hash) {
                    reason = 'no-passcode-for-user';
                } else if (!ok) {
                    reason = 'wrong-passcode';
                }
                return {user: shown, reason: reason};
            });
        }
    } else if (id.type === 5) {
        checked = jwtCheck(id.primary).then(function (r) {
            if (!r.reason && !policyUser(r.user)) {
                return {user: r.user.slice(0, 64), reason: 'unknown-user'};
            }
            return {user: (r.user || '').slice(0, 64), reason: r.reason || null};
        });
    } else {
        checked = Promise.resolve({user: '', reason: 'identity-type-not-supported'});
    }
    return checked.then(function (r) {
        if (!r.reason) {
            var aes = policyUser(r.user).calling_aes || [];
            if (aes.indexOf(rq.calling.text) < 0) {
                r.reason = 'user-not-allowed-on-calling-ae';
            }
        }
        return r;
    });
}

// ---------------------------------------------------------------------------------------
// The preread handler
// ---------------------------------------------------------------------------------------

function setVars(s, fields) {
    for (var k in fields) {
        s.variables['dicom_gate_' + k] = String(fields[k]);
    }
}

function close(s, reason) {
    setVars(s, {verdict: 'close', reason: reason});
    s.deny();
}

function route(s, verdict, reason) {
    setVars(s, {route: verdict, verdict: verdict === 'accept' ? 'accept' : 'reject', reason: reason,
                reject: REJECTS[verdict] ? REJECTS[verdict].join('/') : ''});
    s.done();
}

function hostBinding(s, modality) {
    if (modality.sources.length) {
        var address = parseIp(s.remoteAddress);
        var inside = address !== null && modality.sources.some(function (p) { return inPrefix(address, p); });
        if (!inside) {
            return 'calling-ae-wrong-source';
        }
    }
    if (modality.subjects.length) {
        var subject = s.variables.ssl_client_verify === 'SUCCESS' ? s.variables.ssl_client_s_dn : '';
        if (!subject) {
            return 'calling-ae-no-certificate';
        }
        if (modality.subjects.indexOf(subject) < 0) {
            return 'calling-ae-wrong-certificate';
        }
    }
    return null;
}

function decide(s, L, rq) {
    setVars(s, {called_ae: rq.called.text, calling_ae: rq.calling.text, contexts: rq.contexts,
                identity: IDENTITY_NAMES[rq.identity ? rq.identity.type : 0]});
    if ((rq.version & 1) === 0) {
        return route(s, 'rj-version', 'protocol-version');
    }
    if (!rq.called.valid || L.called.indexOf(rq.called.text) < 0) {
        return route(s, 'rj-called', 'called-ae-not-recognized');
    }
    if (!rq.calling.valid || L.calling.indexOf(rq.calling.text) < 0) {
        return route(s, 'rj-calling', 'calling-ae-not-recognized');
    }
    var binding = hostBinding(s, POLICY.modalities[rq.calling.text]);
    if (binding) {
        return route(s, 'rj-calling', binding);
    }
    identityCheck(L, rq).then(function (r) {
        setVars(s, {user: r.user});
        if (r.reason) {
            return route(s, 'rj-identity', r.reason);
        }
        var rewrite = [];
        if (rq.identity && !L.identity.passThrough) {
            rewrite.push('strip');
            if (rq.identity.positive) {
                rewrite.push('respond');
            }
        }
        setVars(s, {rewrite: rewrite.join(',')});
        route(s, 'accept', 'authorized');
    }).catch(function () {
        close(s, 'gate-error');
    });
}

function preread(s) {
    var L = POLICY.listeners[s.variables.dicom_gate_listener];
    var seen = 0, decided = false;
    s.on('upstream', function (data, flags) {
        if (decided) {
            return;
        }
        seen += data.length;
        try {
            if (!L) {
                decided = true;
                return close(s, 'listener-not-in-policy');
            }
            var rq = parseRequest(data, L.maxRequest);
            if (rq.need && !flags.last && seen <= MAX_PREREAD_COPY) {
                return;
            }
            decided = true;
            if (rq.need) {
                return close(s, flags.last ? 'truncated' : 'fragmented');
            }
            if (rq.close) {
                return close(s, rq.close);
            }
            setVars(s, {request_bytes: rq.length});
            decide(s, L, rq);
        } catch (e) {
            // A parser bug must cost this connection, not log a stack for every attacker.
            decided = true;
            close(s, 'gate-error');
        }
    });
}

// ---------------------------------------------------------------------------------------
// js_filter: rewrite the request going up and the accept coming back, lengths fixed.
// ---------------------------------------------------------------------------------------

function stripIdentity(b) {
    var rq = parseRequest(b, b.length);
    if (!rq.identity) {
        return b;
    }
    var cut = rq.identity.length;
    var out = Buffer.concat([b.slice(0, rq.identity.offset), b.slice(rq.identity.offset + cut)]);
    out.writeUInt32BE(out.readUInt32BE(2) - cut, 2);
    out.writeUInt16BE(out.readUInt16BE(rq.userInfoOffset + 2) - cut, rq.userInfoOffset + 2);
    return out;
}

function addIdentityResponse(b) {
    // A-ASSOCIATE-AC (PS3.8 9.3.3): find the user information item and, unless the PACS
    // answered the identity itself, append a User Identity sub-item (PS3.7 D.3.3.7.2) with
    // an empty server response, which is what types 1, 2 and 5 call for.
    var end = b.length, pos = 74;
    while (pos + 4 <= end) {
        var type = b[pos], len = b.readUInt16BE(pos + 2);
        if (pos + 4 + len > end) {
            return b;
        }
        if (type === 0x50) {
            for (var sub = pos + 4; sub + 4 <= pos + 4 + len; sub += 4 + b.readUInt16BE(sub + 2)) {
                if (b[sub] === 0x59) {
                    return b;
                }
            }
            var insert = pos + 4 + len;
            var out = Buffer.concat([b.slice(0, insert), Buffer.from([0x59, 0, 0, 2, 0, 0]), b.slice(insert)]);
            out.writeUInt32BE(out.readUInt32BE(2) + 6, 2);
            out.writeUInt16BE(len + 6, pos + 2);
            return out;
        }
        pos += 4 + len;
    }
    return b;
}

// Collect the first PDU of one direction, hand it to `rewrite`, then step aside.
function rewriteFirstPdu(s, direction, expectedType, rewrite) {
    var held = Buffer.alloc(0);
    s.on(direction, function (data, flags) {
        held = Buffer.concat([held, data]);
        var ready = held.length >= 6 && held[0] === expectedType;
        var total = ready ? 6 + held.readUInt32BE(2) : 0;
        if (held.length >= 6 && (held[0] !== expectedType || total > 65536)) {
            // Not what we rewrite (a reject, an abort, an oversized accept): pass it untouched.
            s.off(direction);
            return s.send(held, flags);
        }
        if (!ready || held.length < total) {
            if (flags.last) {
                s.send(held, flags);
            }
            return;
        }
        s.off(direction);
        var out = Buffer.concat([rewrite(held.slice(0, total)), held.slice(total)]);
        s.send(out, flags);
    });
}

function filter(s) {
    if (s.variables.dicom_gate_route !== 'accept') {
        return;
    }
    var rewrite = s.variables.dicom_gate_rewrite || '';
    if (rewrite.indexOf('strip') >= 0) {
        rewriteFirstPdu(s, 'upstream', 0x01, stripIdentity);
    }
    if (rewrite.indexOf('respond') >= 0) {
        rewriteFirstPdu(s, 'downstream', 0x02, addIdentityResponse);
    }
}

// ---------------------------------------------------------------------------------------
// Responders: each returns one A-ASSOCIATE-RJ (PS3.8 9.3.4), 10 bytes, every one below 0x80
// so that njs's string is the same bytes on the wire.
// ---------------------------------------------------------------------------------------

function rejectPdu(name) {
    var r = REJECTS[name];
    return String.fromCharCode(0x03, 0, 0, 0, 0, 4, 0, r[0], r[1], r[2]);
}

// A responder reads the whole request before it answers: a socket closed with unread bytes
// resets, and nginx would log each refusal as an upstream error.
function drainRequest(s) {
    s.on('upstream', function (data, flags) {
        if (flags.last || (data.length >= 6 && data.length >= 6 + data.readUInt32BE(2))) {
            s.done();
        }
    });
}

function rejectCallingAe() {
    return rejectPdu('rj-calling');
}

function rejectCalledAe() {
    return rejectPdu('rj-called');
}

function rejectIdentity() {
    return rejectPdu('rj-identity');
}

function rejectProtocolVersion() {
    return rejectPdu('rj-version');
}

export default {preread, filter, drainRequest, rejectCallingAe, rejectCalledAe, rejectIdentity, rejectProtocolVersion,
                parseRequest, stripIdentity, addIdentityResponse};
