#!/usr/bin/env bash
# Create the two instance profiles ray-cluster.yaml names, once per AWS account:
#   landslide-batch-head: the head runs the autoscaler and the job drivers. It launches GPU workers
#     with the workers' profile (iam:PassRole on that role), resolves the AMI from AWS's public SSM
#     parameter (ssm:GetParameters: EC2 asks with the caller's rights), and reads/writes the buckets.
#   landslide-batch-s3: the GPU workers read scenes and models and write blocks in the buckets.
# Usage: bash cluster/iam/create-profiles.sh BUCKET [BUCKET...]   (with admin credentials for IAM)
set -euo pipefail
cd "$(dirname "$0")"
[ $# -ge 1 ] || { echo "usage: $0 BUCKET [BUCKET...]" >&2; exit 2; }
account=$(aws sts get-caller-identity --query Account --output text)
resources=$(for b in "$@"; do printf '"arn:aws:s3:::%s", "arn:aws:s3:::%s/*", ' "$b" "$b"; done)
fill() {  # the policy with this account and the buckets filled in
    sed -e "s/ACCOUNT_ID/$account/" -e "s|\"arn:aws:s3:::BUCKET\", \"arn:aws:s3:::BUCKET/\*\"|${resources%, }|" "$1"
}
for name in landslide-batch-head landslide-batch-s3; do
    policy=$([ $name = landslide-batch-head ] && echo head-policy.json || echo worker-policy.json)
    aws iam create-role --role-name $name --assume-role-policy-document file://trust-ec2.json >/dev/null
    aws iam put-role-policy --role-name $name --policy-name $name --policy-document "$(fill $policy)"
    aws iam create-instance-profile --instance-profile-name $name >/dev/null
    aws iam add-role-to-instance-profile --instance-profile-name $name --role-name $name
    echo "instance profile $name ready"
done
