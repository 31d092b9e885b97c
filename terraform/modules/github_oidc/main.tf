data "aws_partition" "current" {}

locals {
  partition = data.aws_partition.current.partition
  provider_arn = (
    var.existing_oidc_provider_arn != null
    ? var.existing_oidc_provider_arn
    : aws_iam_openid_connect_provider.github[0].arn
  )
  runs_bucket_arn = "arn:${local.partition}:s3:::${var.runs_bucket_name}"
  # Executions are named after the run id; Map Runs are children of the state machine.
  sm_suffix      = element(split(":stateMachine:", var.state_machine_arn), 1)
  sm_prefix      = element(split(":stateMachine:", var.state_machine_arn), 0)
  execution_arns = "${local.sm_prefix}:execution:${local.sm_suffix}:*"
  map_run_arns   = "${local.sm_prefix}:mapRun:${local.sm_suffix}/*"
}

resource "aws_iam_openid_connect_provider" "github" {
  count = var.existing_oidc_provider_arn == null ? 1 : 0

  url            = "https://token.actions.githubusercontent.com"
  client_id_list = ["sts.amazonaws.com"]
  tags           = var.tags
}

data "aws_iam_policy_document" "trust" {
  statement {
    effect  = "Allow"
    actions = ["sts:AssumeRoleWithWebIdentity"]

    principals {
      type        = "Federated"
      identifiers = [local.provider_arn]
    }

    condition {
      test     = "StringEquals"
      variable = "token.actions.githubusercontent.com:aud"
      values   = ["sts.amazonaws.com"]
    }

    condition {
      test     = "StringEquals"
      variable = "token.actions.githubusercontent.com:sub"
      values   = ["repo:${var.repository}:ref:refs/heads/${var.branch}"]
    }
  }
}

resource "aws_iam_role" "image" {
  name                 = "${var.name}-github-image"
  description          = "GitHub Actions (${var.repository}@${var.branch}): push the executor image to its ECR repository"
  assume_role_policy   = data.aws_iam_policy_document.trust.json
  max_session_duration = var.max_session_duration_s
  tags                 = var.tags
}

data "aws_iam_policy_document" "image" {
  statement {
    # A resource wildcard, not an action wildcard: AWS only allows "*" for GetAuthorizationToken,
    # which returns a registry login; what that login may do is limited by the statement below.
    sid       = "RegistryLogin"
    effect    = "Allow"
    actions   = ["ecr:GetAuthorizationToken"]
    resources = ["*"]
  }

  statement {
    sid    = "PushToThisRepositoryOnly"
    effect = "Allow"
    actions = [
      "ecr:BatchCheckLayerAvailability",
      "ecr:BatchGetImage",
      "ecr:CompleteLayerUpload",
      "ecr:DescribeImageScanFindings",
      "ecr:DescribeImages",
      "ecr:GetDownloadUrlForLayer",
      "ecr:InitiateLayerUpload",
      "ecr:PutImage",
      "ecr:UploadLayerPart",
    ]
    resources = [var.ecr_repository_arn]
  }
}

resource "aws_iam_role_policy" "image" {
  name   = "${var.name}-github-image"
  role   = aws_iam_role.image.id
  policy = data.aws_iam_policy_document.image.json
}

resource "aws_iam_role" "run" {
  name                 = "${var.name}-github-run"
  description          = "GitHub Actions (${var.repository}@${var.branch}): start CosmicAI runs and read their results and logs"
  assume_role_policy   = data.aws_iam_policy_document.trust.json
  max_session_duration = var.max_session_duration_s
  tags                 = var.tags
}

data "aws_iam_policy_document" "run" {
  statement {
    # ListTagsForResource: `--state-machine-arn` reads the functions and rendezvous from its tags.
    sid       = "StartRuns"
    effect    = "Allow"
    actions   = ["states:StartExecution", "states:DescribeStateMachine", "states:ListExecutions", "states:ListTagsForResource"]
    resources = [var.state_machine_arn]
  }

  statement {
    sid       = "FollowRuns"
    effect    = "Allow"
    actions   = ["states:DescribeExecution", "states:GetExecutionHistory", "states:ListMapRuns", "states:StopExecution"]
    resources = [local.execution_arns]
  }

  statement {
    sid       = "FollowMapRuns"
    effect    = "Allow"
    actions   = ["states:DescribeMapRun"]
    resources = [local.map_run_arns]
  }

  statement {
    sid       = "UploadPayload"
    effect    = "Allow"
    actions   = ["s3:PutObject"]
    resources = ["${local.runs_bucket_arn}/runs/*/payload.json"]
  }

  statement {
    sid       = "ReadRunsAndResults"
    effect    = "Allow"
    actions   = ["s3:GetObject"]
    resources = concat(["${local.runs_bucket_arn}/runs/*"], [for p in var.result_prefixes : "${local.runs_bucket_arn}/${p}"])
  }

  statement {
    sid       = "ListRunsAndResults"
    effect    = "Allow"
    actions   = ["s3:ListBucket"]
    resources = [local.runs_bucket_arn]

    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values   = concat(["runs/*"], var.result_prefixes)
    }
  }

  statement {
    sid       = "ReadReportLines"
    effect    = "Allow"
    actions   = ["logs:DescribeLogStreams", "logs:FilterLogEvents", "logs:GetLogEvents"]
    resources = concat(var.log_group_arns, [for a in var.log_group_arns : "${a}:*"])
  }

  dynamic "statement" {
    for_each = var.kms_key_arn == null ? [] : [var.kms_key_arn]
    content {
      sid       = "RunsBucketKey"
      effect    = "Allow"
      actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
      resources = [statement.value]
    }
  }
}

resource "aws_iam_role_policy" "run" {
  name   = "${var.name}-github-run"
  role   = aws_iam_role.run.id
  policy = data.aws_iam_policy_document.run.json
}
