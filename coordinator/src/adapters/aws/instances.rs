//! `Instances` on the EC2 SDK: `DescribeInstances` by id, at most 100 ids a call.

use aws_sdk_ec2::types::InstanceStateName;

use crate::adapters::aws::retry;
use crate::adapters::aws::sdk::Clients;
use crate::model::enrollment::InstanceState;
use crate::model::enrollment::InstanceStatus;
use crate::ports::aws::AwsError;
use crate::ports::instances::Instances;
use crate::ports::instances::MAX_IDS_PER_CALL;

fn state(name: Option<&InstanceStateName>) -> InstanceState {
    match name {
        Some(InstanceStateName::Pending) => InstanceState::Pending,
        Some(InstanceStateName::Running) => InstanceState::Running,
        Some(InstanceStateName::ShuttingDown) => InstanceState::ShuttingDown,
        Some(InstanceStateName::Terminated) => InstanceState::Terminated,
        Some(InstanceStateName::Stopping) => InstanceState::Stopping,
        Some(InstanceStateName::Stopped) => InstanceState::Stopped,
        _ => InstanceState::Unknown,
    }
}

#[tonic::async_trait]
impl Instances for Clients {
    async fn describe(&self, ids: &[String]) -> Result<Vec<InstanceStatus>, AwsError> {
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(MAX_IDS_PER_CALL) {
            let mut token: Option<String> = None;
            loop {
                // By filter rather than InstanceIds: an unknown id is then left out instead of
                // failing the whole batch with InvalidInstanceID.NotFound.
                let page = retry(&self.settings, "ec2:DescribeInstances", || {
                    self.ec2
                        .describe_instances()
                        .filters(
                            aws_sdk_ec2::types::Filter::builder()
                                .name("instance-id")
                                .set_values(Some(chunk.to_vec()))
                                .build(),
                        )
                        .set_next_token(token.clone())
                        .send()
                })
                .await?;
                for reservation in page.reservations() {
                    for instance in reservation.instances() {
                        let Some(id) = instance.instance_id() else {
                            continue;
                        };
                        out.push(InstanceStatus {
                            instance_id: id.to_owned(),
                            state: state(instance.state().and_then(|s| s.name())),
                            owner_id: reservation.owner_id().map(str::to_owned),
                        });
                    }
                }
                token = page
                    .next_token()
                    .map(str::to_owned)
                    .filter(|t| !t.is_empty());
                if token.is_none() {
                    break;
                }
            }
        }
        Ok(out)
    }
}
