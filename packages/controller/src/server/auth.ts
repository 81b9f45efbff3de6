/**
 * Authentication: `authorization: Bearer <token>` metadata → user. Tokens are 32 random
 * bytes, base64url; only their sha256 is stored. The hook token (HookService only) lives
 * in a file readable by OAR's hooks; the first admin's token is written once, 0600.
 */
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import { chmodSync, chownSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname } from 'node:path';
import { execFileSync } from 'node:child_process';
import { PermissionDeniedError, UnauthenticatedError, type CallContext, type Logger } from '@oarcloud/common';
import type { Caller } from '../domain.js';
import type { Store } from '../store/store.js';

export function newToken(): string {
  return randomBytes(32).toString('base64url');
}

export function hashToken(token: string): string {
  return createHash('sha256').update(token).digest('hex');
}

export function bearerOf(ctx: CallContext): string | undefined {
  const v = ctx.metadata.get('authorization')[0];
  if (typeof v !== 'string') return undefined;
  const m = /^Bearer\s+(\S+)$/i.exec(v.trim());
  return m?.[1];
}

export class Auth {
  private readonly hookHash: Buffer;

  private readonly nodeHash: Buffer | undefined;

  constructor(
    private readonly store: Store,
    hookToken: string,
    nodeToken?: string,
  ) {
    this.hookHash = createHash('sha256').update(hookToken).digest();
    this.nodeHash = nodeToken ? createHash('sha256').update(nodeToken).digest() : undefined;
  }

  /** Calls of agents (FetchLayer): the node token, or an admin's. */
  node(ctx: CallContext): void {
    const token = bearerOf(ctx);
    if (!token) throw new UnauthenticatedError('missing node token');
    if (this.nodeHash && timingSafeEqual(createHash('sha256').update(token).digest(), this.nodeHash)) return;
    this.admin(ctx);
  }

  /** The calling user; UnauthenticatedError when the token is missing, unknown or revoked. */
  caller(ctx: CallContext): Caller {
    const token = bearerOf(ctx);
    if (!token) throw new UnauthenticatedError('missing token (authorization: Bearer <token>)');
    const u = this.store.userByTokenHash(hashToken(token));
    if (!u) throw new UnauthenticatedError('unknown or revoked token');
    return { name: u.name, role: u.role };
  }

  admin(ctx: CallContext): Caller {
    const c = this.caller(ctx);
    if (c.role !== 'admin') throw new PermissionDeniedError('this call is for admins');
    return c;
  }

  /** HookService: the hook token, or an admin's. */
  hook(ctx: CallContext): void {
    const token = bearerOf(ctx);
    if (!token) throw new UnauthenticatedError('missing hook token');
    if (timingSafeEqual(createHash('sha256').update(token).digest(), this.hookHash)) return;
    this.admin(ctx);
  }
}

/** Writes a secret file with the given mode (the folder is created 0755). */
function writeSecret(path: string, content: string, mode: number): void {
  mkdirSync(dirname(path), { recursive: true, mode: 0o755 });
  writeFileSync(path, `${content}\n`, { mode, flag: 'wx' });
  chmodSync(path, mode);
}

function oarGid(): number | undefined {
  try {
    const line = execFileSync('getent', ['group', 'oar'], { encoding: 'utf8', timeout: 5000 });
    const gid = Number(line.split(':')[2]);
    return Number.isInteger(gid) ? gid : undefined;
  } catch {
    return undefined;
  }
}

/**
 * The node token (agents → controller: FetchLayer), read from `file` or created there
 * (0600; copy it to every node, like the agents' TLS material).
 */
export function bootstrapNodeToken(file: string, log: Logger): string {
  if (existsSync(file)) {
    const t = readFileSync(file, 'utf8').trim();
    if (t) return t;
  }
  const token = newToken();
  if (existsSync(file)) writeFileSync(file, `${token}\n`, { mode: 0o600 });
  else writeSecret(file, token, 0o600);
  log.info('node token created', { tokenFile: file });
  return token;
}

/**
 * First start: creates user `root` (admin) if there is no admin, writing its token to
 * `adminTokenFile` (0600); creates the hook token file (0640, group oar) if absent.
 * Returns the hook token.
 */
export function bootstrapTokens(store: Store, files: { adminTokenFile: string; hookTokenFile: string }, log: Logger, now = Date.now()): string {
  if (!store.hasAdmin()) {
    const token = newToken();
    if (store.getUser('root')) store.replaceToken('root', hashToken(token), now);
    else store.addUser('root', 'admin', hashToken(token), now);
    if (existsSync(files.adminTokenFile)) writeFileSync(files.adminTokenFile, `${token}\n`, { mode: 0o600 });
    else writeSecret(files.adminTokenFile, token, 0o600);
    log.info('admin user created', { user: 'root', tokenFile: files.adminTokenFile });
  }
  if (existsSync(files.hookTokenFile)) {
    const t = readFileSync(files.hookTokenFile, 'utf8').trim();
    if (t) return t;
  }
  const token = newToken();
  if (existsSync(files.hookTokenFile)) writeFileSync(files.hookTokenFile, `${token}\n`, { mode: 0o640 });
  else writeSecret(files.hookTokenFile, token, 0o640);
  const gid = oarGid();
  if (gid !== undefined && process.getuid?.() === 0) chownSync(files.hookTokenFile, 0, gid);
  log.info('hook token created', { tokenFile: files.hookTokenFile, group: gid === undefined ? 'none' : 'oar' });
  return token;
}
