/**
 * UserService (tokens) and NodeService (admin view of the agents).
 */
import { NodeServiceService, UserServiceService, type NodeServiceServer, type UserServiceServer } from '@oarcloud/api';
import { NotFoundError, withUnimplemented } from '@oarcloud/common';
import { hashToken, newToken } from './auth.js';
import { checkUserName, nodeToProto, roleFromProto, userToProto } from './convert.js';
import type { ServiceDeps } from './deps.js';

export function userServiceImpl(d: ServiceDeps): UserServiceServer {
  return withUnimplemented<UserServiceServer>(UserServiceService, {
    whoAmI: d.grpc.unary('WhoAmI', async (_req, ctx) => {
      const c = d.auth.caller(ctx);
      return userToProto(d.store.getUser(c.name)!);
    }),
    addUser: d.grpc.unary('AddUser', async (req, ctx) => {
      const admin = d.auth.admin(ctx);
      const name = checkUserName(req.name);
      const role = roleFromProto(req.role);
      const token = newToken();
      const user = d.store.addUser(name, role, hashToken(token), d.now());
      d.log.info('user added', { user: name, role, by: admin.name });
      return { user: userToProto(user), token };
    }),
    issueToken: d.grpc.unary('IssueToken', async (req, ctx) => {
      const admin = d.auth.admin(ctx);
      const name = checkUserName(req.name);
      const token = newToken();
      d.store.replaceToken(name, hashToken(token), d.now());
      d.log.info('token issued', { user: name, by: admin.name });
      return { user: userToProto(d.store.getUser(name)!), token };
    }),
    removeUser: d.grpc.unary('RemoveUser', async (req, ctx) => {
      const admin = d.auth.admin(ctx);
      const name = checkUserName(req.name);
      if (!d.store.removeUser(name)) throw new NotFoundError(`no user ${name}`);
      d.log.info('user removed', { user: name, by: admin.name });
      return {};
    }),
    listUsers: d.grpc.unary('ListUsers', async (_req, ctx) => {
      d.auth.admin(ctx);
      return { users: d.store.listUsers().map(userToProto) };
    }),
  });
}

export function nodeServiceImpl(d: ServiceDeps): NodeServiceServer {
  return withUnimplemented<NodeServiceServer>(NodeServiceService, {
    listNodes: d.grpc.unary('ListNodes', async (_req, ctx) => {
      d.auth.admin(ctx);
      return { nodes: d.agents.health().map(nodeToProto) };
    }),
  });
}
