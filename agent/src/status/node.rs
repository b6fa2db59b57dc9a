//! The node's conditions (`MemoryPressure`, `DiskPressure`, `PIDPressure`) as the API shows
//! them: [`publish_conditions`] turns each change the eviction manager makes into
//! `v1.NodeCondition`s (heartbeat: the time of the change), and [`NodeConditions`] reads the
//! latest (`/node` serves them until cluster mode posts them to an API server).

use k8s_openapi::api::core::v1::NodeCondition as ApiNodeCondition;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::model::node::NodeCondition;

/// Reads the node's latest conditions. Cheap to clone; the default reads none.
#[derive(Debug, Clone)]
pub struct NodeConditions {
    latest: watch::Receiver<Vec<ApiNodeCondition>>,
}

impl Default for NodeConditions {
    fn default() -> Self {
        Self {
            latest: watch::channel(Vec::new()).1,
        }
    }
}

impl NodeConditions {
    #[must_use]
    pub fn get(&self) -> Vec<ApiNodeCondition> {
        self.latest.borrow().clone()
    }
}

/// Publishes every change of `from` (the eviction manager's conditions) as API conditions
/// until `cancel` fires or `from`'s sender is dropped. Returns the future to spawn and the
/// read handle.
pub fn publish_conditions(
    mut from: watch::Receiver<Vec<NodeCondition>>,
    cancel: CancellationToken,
) -> (impl Future<Output = ()> + Send, NodeConditions) {
    let (tx, latest) = watch::channel(Vec::new());
    let task = async move {
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                changed = from.changed() => if changed.is_err() { return },
            }
            let now = jiff::Timestamp::now();
            let api = from
                .borrow_and_update()
                .iter()
                .map(|c| c.to_api(now))
                .collect();
            tx.send_replace(api);
        }
    };
    (task, NodeConditions { latest })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::node::PressureCondition;

    #[tokio::test]
    async fn each_change_is_published_as_api_conditions() {
        let (tx, rx) = watch::channel(Vec::new());
        let cancel = CancellationToken::new();
        let (task, conditions) = publish_conditions(rx, cancel.clone());
        let task = tokio::spawn(task);
        assert!(conditions.get().is_empty());

        let mut seen = conditions.clone();
        tx.send_replace(vec![NodeCondition {
            kind: PressureCondition::MemoryPressure,
            status: true,
            reason: "KubeletHasInsufficientMemory",
            message: "kubelet has insufficient memory available",
            last_transition_time: jiff::Timestamp::UNIX_EPOCH,
        }]);
        seen.latest.changed().await.expect("published");
        let got = conditions.get();
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0].type_, "MemoryPressure");
        assert_eq!(got[0].status, "True");
        assert!(got[0].last_heartbeat_time.is_some());

        cancel.cancel();
        task.await.expect("the task ends when cancelled");
        assert_eq!(
            conditions.get().len(),
            1,
            "the last conditions stay readable"
        );
    }
}
