/**
 * proto ↔ domain at the agent's gRPC edge. Incoming messages are checked for presence here;
 * their values are validated by the instance manager.
 */
import * as pb from '@oarcloud/api';
import { InvalidArgumentError } from '@oarcloud/common';
import type { InstanceRecord, InstanceSpec, InstanceState } from '../instances/model.js';

const STATE_TO_PROTO: Record<InstanceState, pb.InstanceState> = {
  creating: pb.InstanceState.INSTANCE_STATE_CREATING,
  running: pb.InstanceState.INSTANCE_STATE_RUNNING,
  stopped: pb.InstanceState.INSTANCE_STATE_STOPPED,
  failed: pb.InstanceState.INSTANCE_STATE_FAILED,
  deleted: pb.InstanceState.INSTANCE_STATE_DELETED,
};

export function stateToProto(s: InstanceState): pb.InstanceState {
  return STATE_TO_PROTO[s];
}

export function specFromProto(spec: pb.InstanceSpec | undefined): InstanceSpec {
  if (!spec) throw new InvalidArgumentError('spec is required');
  if (!spec.image) throw new InvalidArgumentError('spec.image is required');
  return {
    id: spec.id,
    name: spec.name,
    jobId: spec.jobId,
    owner: spec.owner,
    image: { name: spec.image.name, layers: [...spec.image.layers] },
    vcpus: spec.vcpus,
    memoryMib: spec.memoryMib,
    cpuset: spec.cpuset,
    sshAuthorizedKeys: [...spec.sshAuthorizedKeys],
    hostname: spec.hostname || spec.name,
    networks: spec.networks.map((n) => ({
      networkId: n.networkId,
      vni: n.vni,
      interface: n.interface,
      mac: n.mac,
      address: n.address,
      gateway: n.gateway,
      mtu: n.mtu,
    })),
    volumes: (spec.volumes?.mounts ?? []).map((v) => ({ volumeId: v.volumeId, path: v.path, readOnly: v.readOnly })),
  };
}

export function specToProto(s: InstanceSpec): pb.InstanceSpec {
  return {
    id: s.id,
    name: s.name,
    jobId: s.jobId,
    owner: s.owner,
    image: { name: s.image.name, layers: [...s.image.layers] },
    vcpus: s.vcpus,
    memoryMib: s.memoryMib,
    cpuset: s.cpuset,
    sshAuthorizedKeys: [...s.sshAuthorizedKeys],
    hostname: s.hostname,
    networks: s.networks.map((n) => ({ ...n })),
    volumes: s.volumes?.length ? { mounts: s.volumes.map((v) => ({ ...v })) } : undefined,
  };
}

export function instanceToProto(rec: InstanceRecord, node: string): pb.Instance {
  return {
    spec: specToProto(rec.spec),
    node,
    state: stateToProto(rec.state),
    reason: rec.reason,
    createdAtMs: rec.createdAtMs,
    updatedAtMs: rec.updatedAtMs,
    initPid: rec.initPid,
    // Usage goes to the controller in heartbeats (NATS), not in the agent API.
    usage: undefined,
  };
}
