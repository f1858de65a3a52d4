//! The group coordinator: members, generations, rebalances, static membership, session
//! timeouts, committed offsets and the KIP-447 checks of transactional offset commits.

use super::process::SimProcess;
use super::{Request, SimCluster, SimError};
use exactly_core::engine::{GroupEvent, TopicPartition};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

/// A member id (unique in the cluster).
pub type MemberId = u64;

/// The rebalance protocol of a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GroupProtocol {
    /// Every member revokes everything, then the new assignment is handed out.
    Eager,
    /// Only partitions that move are revoked (cooperative-sticky).
    #[default]
    Cooperative,
}

/// What a member sends with its transactional offsets (`consumer.group_metadata()`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupMetadata {
    /// Group id.
    pub group: String,
    /// Member id.
    pub member: MemberId,
    /// The member's generation.
    pub generation: i32,
    /// `group.instance.id`, for static members.
    pub instance: Option<String>,
}

type Tp = (String, i32);

/// Why a member is no longer in its group (it learns at its next heartbeat).
#[derive(Debug, Clone, Copy)]
enum Gone {
    /// A newer member joined with its `group.instance.id`.
    Fenced { visible_at: i64 },
    /// Its session timed out.
    Removed { visible_at: i64 },
    /// It left.
    Left,
}

struct Member {
    instance: Option<String>,
    process: Arc<SimProcess>,
    generation: i32,
    /// Heartbeats happen at `joined_ms + k * heartbeat_interval`.
    joined_ms: i64,
    last_alive_ms: i64,
    /// Rebalance events, with when the member sees them.
    notices: VecDeque<(i64, GroupEvent)>,
}

/// One consumer group.
#[derive(Default)]
pub(crate) struct Group {
    protocol: GroupProtocol,
    generation: i32,
    members: BTreeMap<MemberId, Member>,
    instances: HashMap<String, MemberId>,
    topics: BTreeSet<String>,
    /// Partitions a member holds.
    owner: BTreeMap<Tp, MemberId>,
    /// Partitions revoked from a member that has not completed the revocation yet.
    in_transit: BTreeMap<Tp, MemberId>,
    pub(crate) committed: HashMap<Tp, i64>,
    gone: HashMap<MemberId, Gone>,
}

/// What a member learns at a poll.
#[derive(Debug)]
pub(crate) enum MemberView {
    /// Nothing new.
    Nothing,
    /// A rebalance event.
    Event(GroupEvent),
    /// The member was removed (session timeout): its partitions are lost; it must rejoin.
    Lost,
    /// A newer member took its `group.instance.id`.
    Fenced,
}

fn tps(list: impl IntoIterator<Item = Tp>) -> Vec<TopicPartition> {
    list.into_iter()
        .map(|(t, p)| TopicPartition::new(t.as_str(), p))
        .collect()
}

impl SimCluster {
    pub(crate) fn group_mut(&mut self, group: &str) -> &mut Group {
        self.groups.entry(group.to_owned()).or_default()
    }

    /// When a member sees what happens now: at its next heartbeat.
    fn visible_at(&self, joined_ms: i64) -> i64 {
        let now = self.now_ms();
        let interval = self.config.heartbeat_interval_ms;
        if interval <= 0 || now <= joined_ms {
            return now;
        }
        let k = (now - joined_ms + interval - 1) / interval;
        joined_ms + k * interval
    }

    /// A member joins `group` subscribed to `topics`. With `instance` (static membership) a
    /// member already holding that instance id is replaced: the new one takes its assignment
    /// at once, without a rebalance, and the old one is fenced. Otherwise the group rebalances.
    pub fn join_group(
        &mut self,
        group: &str,
        instance: Option<&str>,
        topics: &[String],
        protocol: GroupProtocol,
        process: Arc<SimProcess>,
    ) -> MemberId {
        self.expire_members();
        let id = self.next_member;
        self.next_member += 1;
        let now = self.now_ms();
        let g = self.group_mut(group);
        g.protocol = protocol;
        let new_topics = topics.iter().any(|t| !g.topics.contains(t));
        g.topics.extend(topics.iter().cloned());
        let generation = g.generation;
        g.members.insert(
            id,
            Member {
                instance: instance.map(str::to_owned),
                process,
                generation,
                joined_ms: now,
                last_alive_ms: now,
                notices: VecDeque::new(),
            },
        );
        let replaced = instance.and_then(|i| g.instances.insert(i.to_owned(), id));
        if let Some(old) = replaced {
            let old_member = g.members.remove(&old).expect("instances map to members");
            let fence_at = self.visible_at(old_member.joined_ms);
            let g = self.group_mut(group);
            g.gone.insert(
                old,
                Gone::Fenced {
                    visible_at: fence_at,
                },
            );
            let held: Vec<Tp> = g
                .owner
                .iter()
                .filter(|(_, m)| **m == old)
                .map(|(tp, _)| tp.clone())
                .collect();
            for tp in &held {
                g.owner.insert(tp.clone(), id);
            }
            // Revocations the old member never completed are void: it is gone.
            g.in_transit.retain(|_, m| *m != old);
            let member = g.members.get_mut(&id).expect("inserted above");
            member
                .notices
                .push_back((now, GroupEvent::Assigned(tps(held))));
            if !new_topics {
                self.maybe_finish(group);
                return id;
            }
        }
        self.rebalance(group);
        id
    }

    /// A member leaves its group (a dynamic member's close): its partitions are reassigned.
    /// Static members do not leave on close; their session times out instead.
    pub fn leave_group(&mut self, group: &str, member: MemberId) {
        let g = self.group_mut(group);
        if g.members.get(&member).is_some_and(|m| m.instance.is_some()) {
            return;
        }
        if g.members.contains_key(&member) {
            self.remove_member(group, member, Gone::Left);
        }
    }

    fn remove_member(&mut self, group: &str, member: MemberId, why: Gone) {
        let g = self.group_mut(group);
        let Some(m) = g.members.remove(&member) else {
            return;
        };
        if let Some(i) = &m.instance {
            if g.instances.get(i) == Some(&member) {
                g.instances.remove(i);
            }
        }
        g.owner.retain(|_, o| *o != member);
        g.in_transit.retain(|_, o| *o != member);
        g.gone.insert(member, why);
        self.rebalance(group);
    }

    /// Removes members whose process was paused or dead for a session timeout.
    pub(crate) fn expire_members(&mut self) {
        let now = self.now_ms();
        let timeout = self.config.session_timeout_ms;
        let mut expired = Vec::new();
        for (name, g) in &mut self.groups {
            for (id, m) in &mut g.members {
                if m.process.is_live() {
                    m.last_alive_ms = now;
                } else if now - m.last_alive_ms >= timeout {
                    expired.push((name.clone(), *id));
                }
            }
        }
        for (group, id) in expired {
            tracing::debug!(group, member = id, "session timed out: member removed");
            self.remove_member(&group, id, Gone::Removed { visible_at: now });
        }
    }

    /// When each member of `group` learns what happens now: its next heartbeat.
    fn next_heartbeats(&mut self, group: &str) -> HashMap<MemberId, i64> {
        let joined: Vec<(MemberId, i64)> = self
            .group_mut(group)
            .members
            .iter()
            .map(|(id, m)| (*id, m.joined_ms))
            .collect();
        joined
            .into_iter()
            .map(|(id, j)| (id, self.visible_at(j)))
            .collect()
    }

    /// Starts a rebalance: computes the target assignment and revokes what must move (eager:
    /// everything). The new assignment is handed out once every revocation is complete.
    fn rebalance(&mut self, group: &str) {
        let target = self.target_assignment(group);
        let visible = self.next_heartbeats(group);
        let g = self.group_mut(group);
        let mut revoke: BTreeMap<MemberId, Vec<Tp>> = BTreeMap::new();
        for (tp, m) in &g.owner {
            if g.protocol == GroupProtocol::Eager || target.get(tp) != Some(m) {
                revoke.entry(*m).or_default().push(tp.clone());
            }
        }
        for (m, list) in revoke {
            for tp in &list {
                g.owner.remove(tp);
                g.in_transit.insert(tp.clone(), m);
            }
            if let Some(member) = g.members.get_mut(&m) {
                member
                    .notices
                    .push_back((visible[&m], GroupEvent::Revoked(tps(list))));
            }
        }
        self.maybe_finish(group);
    }

    /// Ends a rebalance once nothing is in transit: a new generation, and every partition
    /// nobody holds goes to its target member.
    fn maybe_finish(&mut self, group: &str) {
        if !self.group_mut(group).in_transit.is_empty() {
            return;
        }
        let target = self.target_assignment(group);
        let visible = self.next_heartbeats(group);
        let g = self.group_mut(group);
        let mut added: BTreeMap<MemberId, Vec<Tp>> = BTreeMap::new();
        for (tp, m) in &target {
            if !g.owner.contains_key(tp) {
                g.owner.insert(tp.clone(), *m);
                added.entry(*m).or_default().push(tp.clone());
            }
        }
        if added.is_empty() && g.protocol == GroupProtocol::Cooperative {
            return;
        }
        g.generation += 1;
        let generation = g.generation;
        let protocol = g.protocol;
        let owner = g.owner.clone();
        for (id, member) in &mut g.members {
            member.generation = generation;
            let list = match protocol {
                // Eager hands each member its whole assignment again.
                GroupProtocol::Eager => owner
                    .iter()
                    .filter(|(_, m)| *m == id)
                    .map(|(tp, _)| tp.clone())
                    .collect(),
                GroupProtocol::Cooperative => added.remove(id).unwrap_or_default(),
            };
            if protocol == GroupProtocol::Eager || !list.is_empty() {
                member
                    .notices
                    .push_back((visible[id], GroupEvent::Assigned(tps(list))));
            }
        }
    }

    /// A sticky, balanced assignment of the subscribed topics' partitions to the members.
    fn target_assignment(&mut self, group: &str) -> BTreeMap<Tp, MemberId> {
        let topics: Vec<String> = self.group_mut(group).topics.iter().cloned().collect();
        let mut partitions: Vec<Tp> = Vec::new();
        for t in topics {
            for p in 0..self.partitions(&t).unwrap_or(0) {
                partitions.push((t.clone(), p));
            }
        }
        let g = self.group_mut(group);
        let members: Vec<MemberId> = g.members.keys().copied().collect();
        let mut out = BTreeMap::new();
        if members.is_empty() {
            return out;
        }
        let (base, extra) = (
            partitions.len() / members.len(),
            partitions.len() % members.len(),
        );
        let capacity: HashMap<MemberId, usize> = members
            .iter()
            .enumerate()
            .map(|(i, m)| (*m, base + usize::from(i < extra)))
            .collect();
        let mut count: HashMap<MemberId, usize> = HashMap::new();
        let holder = |tp: &Tp| g.owner.get(tp).or_else(|| g.in_transit.get(tp)).copied();
        let mut rest = Vec::new();
        for tp in &partitions {
            match holder(tp) {
                Some(m)
                    if capacity
                        .get(&m)
                        .is_some_and(|c| count.get(&m).unwrap_or(&0) < c) =>
                {
                    *count.entry(m).or_default() += 1;
                    out.insert(tp.clone(), m);
                }
                _ => rest.push(tp.clone()),
            }
        }
        for tp in rest {
            let m = *members
                .iter()
                .find(|m| count.get(*m).unwrap_or(&0) < &capacity[*m])
                .expect("capacities add up to the partition count");
            *count.entry(m).or_default() += 1;
            out.insert(tp, m);
        }
        out
    }

    /// What `member` learns at a poll (its heartbeat): at most one event.
    pub(crate) fn member_poll(&mut self, group: &str, member: MemberId) -> MemberView {
        self.tick();
        let now = self.now_ms();
        let g = self.group_mut(group);
        match g.gone.get(&member) {
            Some(Gone::Fenced { visible_at }) if now >= *visible_at => return MemberView::Fenced,
            Some(Gone::Removed { visible_at }) if now >= *visible_at => return MemberView::Lost,
            Some(_) => return MemberView::Nothing,
            None => {}
        }
        let Some(m) = g.members.get_mut(&member) else {
            return MemberView::Nothing;
        };
        m.last_alive_ms = now;
        match m.notices.front() {
            Some((at, _)) if *at <= now => {
                MemberView::Event(m.notices.pop_front().expect("front exists").1)
            }
            _ => MemberView::Nothing,
        }
    }

    /// Whether `member` was removed from its group and knows it (its assignment is lost).
    pub(crate) fn member_lost(&self, group: &str, member: MemberId) -> bool {
        let now = self.now_ms();
        self.groups.get(group).is_some_and(|g| {
            matches!(g.gone.get(&member), Some(Gone::Removed { visible_at }) if now >= *visible_at)
        })
    }

    /// The member completed revoking `partitions`.
    pub(crate) fn ack_revoke(&mut self, group: &str, member: MemberId, partitions: &[Tp]) {
        let g = self.group_mut(group);
        for tp in partitions {
            if g.in_transit.get(tp) == Some(&member) {
                g.in_transit.remove(tp);
            }
        }
        self.maybe_finish(group);
    }

    /// The member's `group_metadata()`.
    pub fn member_metadata(&mut self, group: &str, member: MemberId) -> GroupMetadata {
        let g = self.group_mut(group);
        let (generation, instance) = g
            .members
            .get(&member)
            .map_or((-1, None), |m| (m.generation, m.instance.clone()));
        GroupMetadata {
            group: group.to_owned(),
            member,
            generation,
            instance,
        }
    }

    /// KIP-447: offsets are accepted only from a current member of the current generation.
    pub(crate) fn check_member(&mut self, meta: &GroupMetadata) -> Result<(), SimError> {
        self.expire_members();
        let g = self.group_mut(&meta.group);
        match g.gone.get(&meta.member) {
            Some(Gone::Fenced { .. }) => {
                return Err(SimError::FencedInstance(format!(
                    "member {} of {}: a newer member has its group.instance.id",
                    meta.member, meta.group
                )))
            }
            Some(_) => {
                return Err(SimError::StaleMember(format!(
                    "UNKNOWN_MEMBER_ID: member {} left group {}",
                    meta.member, meta.group
                )))
            }
            None => {}
        }
        match g.members.get(&meta.member) {
            Some(m) if m.generation == meta.generation => Ok(()),
            Some(m) => Err(SimError::StaleMember(format!(
                "ILLEGAL_GENERATION: member {} sent generation {}, the group is at {}",
                meta.member, meta.generation, m.generation
            ))),
            None => Err(SimError::StaleMember(format!(
                "UNKNOWN_MEMBER_ID: member {} of {}",
                meta.member, meta.group
            ))),
        }
    }

    /// The group's committed offsets. `stable` (read_committed): fails retriably while an
    /// open transaction holds offsets for one of the partitions (UNSTABLE_OFFSET_COMMIT).
    pub fn committed(
        &mut self,
        group: &str,
        partitions: &[Tp],
        stable: bool,
    ) -> Result<Vec<Option<i64>>, SimError> {
        self.expire_transactions();
        self.read_fault(Request::OffsetFetch, "OffsetFetch")?;
        if stable
            && partitions
                .iter()
                .any(|(t, p)| self.has_pending_offsets(group, t, *p))
        {
            return Err(SimError::Retriable(
                "OffsetFetch (UNSTABLE_OFFSET_COMMIT: a transaction holds pending offsets)",
            ));
        }
        let g = self.group_mut(group);
        Ok(partitions
            .iter()
            .map(|tp| g.committed.get(tp).copied())
            .collect())
    }

    /// Deletes the group's committed offsets of `topic`: what the broker does once they are
    /// older than `offsets.retention.minutes` with the group empty, or an operator's
    /// `kafka-consumer-groups --delete-offsets`. Returns how many it deleted.
    pub fn delete_committed_offsets(&mut self, group: &str, topic: &str) -> usize {
        let g = self.group_mut(group);
        let before = g.committed.len();
        g.committed.retain(|(t, _), _| t != topic);
        before - g.committed.len()
    }

    /// The group's committed offset for a partition.
    pub fn committed_offset(&self, group: &str, topic: &str, partition: i32) -> Option<i64> {
        self.groups
            .get(group)
            .and_then(|g| g.committed.get(&(topic.to_owned(), partition)).copied())
    }

    /// A non-transactional offset commit (at-least-once mode), checked like a transactional
    /// one.
    pub fn commit_offsets(
        &mut self,
        meta: &GroupMetadata,
        offsets: &[(String, i32, i64)],
    ) -> Result<(), SimError> {
        self.check_member(meta)?;
        let g = self.group_mut(&meta.group);
        for (t, p, o) in offsets {
            g.committed.insert((t.clone(), *p), *o);
        }
        Ok(())
    }

    /// The partitions each current member holds, by member (for assertions).
    pub fn group_assignment(&self, group: &str) -> BTreeMap<MemberId, Vec<TopicPartition>> {
        let mut out: BTreeMap<MemberId, Vec<TopicPartition>> = BTreeMap::new();
        if let Some(g) = self.groups.get(group) {
            for ((t, p), m) in &g.owner {
                out.entry(*m)
                    .or_default()
                    .push(TopicPartition::new(t.as_str(), *p));
            }
        }
        out
    }

    /// The group's generation.
    pub fn generation(&self, group: &str) -> i32 {
        self.groups.get(group).map_or(0, |g| g.generation)
    }
}
