//! Every AWS API action the coordinator calls, in one list. The IAM policy in
//! `packaging/iam/` must grant exactly these (`packaging/check.sh` compares the two sets), so a new
//! SDK call without a policy change — or a stale grant — fails CI.

pub const COORDINATOR_ACTIONS: &[&str] = &[
    // Inventory: groups, their instances (lifecycle, health, protection) and target groups.
    "autoscaling:DescribeAutoScalingGroups",
    // An instance refresh under way holds destructive steps in its group.
    "autoscaling:DescribeInstanceRefreshes",
    // Enrollment: the instance behind an identity document is pending or running.
    "ec2:DescribeInstances",
    // Replacement.
    "autoscaling:SetInstanceHealth",
    "autoscaling:TerminateInstanceInAutoScalingGroup",
    // Target health, the deregistration delay, deregistration.
    "elasticloadbalancing:DescribeTargetHealth",
    "elasticloadbalancing:DescribeTargetGroupAttributes",
    "elasticloadbalancing:DeregisterTargets",
    // SSM remediation with AWS-RunShellScript, and its real result.
    "ssm:SendCommand",
    "ssm:GetCommandInvocation",
    // State, journal and the leader lease.
    "dynamodb:GetItem",
    "dynamodb:PutItem",
    "dynamodb:UpdateItem",
    "dynamodb:DeleteItem",
    "dynamodb:Query",
    // Notifications.
    "sns:Publish",
    "events:PutEvents",
];
