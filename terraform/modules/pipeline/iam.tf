locals {
  runs_bucket_arn   = "arn:${local.partition}:s3:::${var.runs_bucket_name}"
  state_machine_arn = "arn:${local.partition}:states:${local.region}:${local.account_id}:stateMachine:${var.state_machine_name}"
  # Partition files: listed by init, read by init and the executor.
  data_object_arns = [for d in var.data_sources : "arn:${local.partition}:s3:::${d.bucket}/${d.prefix}*"]
  reference_record_arns = distinct(flatten([
    for d in var.data_sources : [for p in var.result_prefixes : "arn:${local.partition}:s3:::${d.bucket}/${p}"]
  ]))
}

data "aws_iam_policy_document" "lambda_assume" {
  statement {
    effect  = "Allow"
    actions = ["sts:AssumeRole"]

    principals {
      type        = "Service"
      identifiers = ["lambda.amazonaws.com"]
    }

    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account_id]
    }
  }
}

resource "aws_iam_role" "function" {
  for_each = var.function_names

  name               = "${var.name}-${each.key}"
  description        = "CosmicAI ${each.key} function: least-privilege access to its own log group and S3 prefixes"
  assume_role_policy = data.aws_iam_policy_document.lambda_assume.json
  tags               = var.tags
}

# Statements every function role shares: its own log group, the bucket key, X-Ray when enabled.
data "aws_iam_policy_document" "function_common" {
  for_each = var.function_names

  statement {
    sid       = "OwnLogGroup"
    effect    = "Allow"
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents"]
    resources = ["${aws_cloudwatch_log_group.this[each.key].arn}:*"]
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

  dynamic "statement" {
    for_each = var.xray_tracing ? ["xray"] : []
    content {
      # X-Ray's write actions have no resource-level permissions: AWS documents "*" here.
      sid       = "XRayWrite"
      effect    = "Allow"
      actions   = ["xray:PutTraceSegments", "xray:PutTelemetryRecords"]
      resources = ["*"]
    }
  }
}

# Statements for reading the partition files (init and executor).
data "aws_iam_policy_document" "read_data" {
  dynamic "statement" {
    for_each = var.data_sources
    content {
      sid       = "ListData${statement.key}"
      effect    = "Allow"
      actions   = ["s3:ListBucket"]
      resources = ["arn:${local.partition}:s3:::${statement.value.bucket}"]

      condition {
        test     = "StringLike"
        variable = "s3:prefix"
        values   = ["${statement.value.prefix}*"]
      }
    }
  }

  dynamic "statement" {
    for_each = length(local.data_object_arns) == 0 ? [] : ["data"]
    content {
      sid       = "ReadData"
      effect    = "Allow"
      actions   = ["s3:GetObject"]
      resources = local.data_object_arns
    }
  }
}

data "aws_iam_policy_document" "init" {
  source_policy_documents = [data.aws_iam_policy_document.function_common["init"].json, data.aws_iam_policy_document.read_data.json]

  statement {
    sid       = "ReadPayload"
    effect    = "Allow"
    actions   = ["s3:GetObject"]
    resources = ["${local.runs_bucket_arn}/runs/*/payload.json"]
  }

  statement {
    sid       = "WriteItems"
    effect    = "Allow"
    actions   = ["s3:PutObject"]
    resources = ["${local.runs_bucket_arn}/runs/*/items.json", "${local.runs_bucket_arn}/runs/*/items-redrive-*.json"]
  }

  # A redrive (`cosmicai redrive`) plans only the ranks without a result: it reads the run's
  # items and rank records and removes the old failure records of the ranks it re-runs.
  statement {
    sid       = "ReadRunForRedrive"
    effect    = "Allow"
    actions   = ["s3:GetObject"]
    resources = ["${local.runs_bucket_arn}/runs/*/items.json", "${local.runs_bucket_arn}/runs/*/ranks/*"]
  }

  statement {
    sid       = "ListRanksForRedrive"
    effect    = "Allow"
    actions   = ["s3:ListBucket"]
    resources = [local.runs_bucket_arn]

    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values   = ["runs/*/ranks/*"]
    }
  }

  statement {
    sid       = "ClearRedrivenFailures"
    effect    = "Allow"
    actions   = ["s3:DeleteObject"]
    resources = ["${local.runs_bucket_arn}/runs/*/failures/*"]
  }
}

data "aws_iam_policy_document" "executor" {
  source_policy_documents = [data.aws_iam_policy_document.function_common["executor"].json, data.aws_iam_policy_document.read_data.json]

  statement {
    sid       = "ReadCode"
    effect    = "Allow"
    actions   = ["s3:GetObject"]
    resources = [for p in var.code_prefixes : "${local.runs_bucket_arn}/${p}"]
  }

  statement {
    sid       = "WriteRankResults"
    effect    = "Allow"
    actions   = ["s3:PutObject"]
    resources = ["${local.runs_bucket_arn}/runs/*/ranks/*"]
  }

  # Reference-executor scripts write their record to DATA_BUCKET/RESULT_PATH/<rank>.json
  # themselves; the executor reads it back as the rank's record (result prefixes only).
  dynamic "statement" {
    for_each = length(local.reference_record_arns) == 0 ? [] : ["records"]
    content {
      sid       = "ReferenceScriptRecords"
      effect    = "Allow"
      actions   = ["s3:PutObject", "s3:GetObject"]
      resources = local.reference_record_arns
    }
  }

  statement {
    # FMI's S3 channel exchanges messages as objects under the run's communicator name:
    # put, poll with GetObject until the object exists, delete.
    sid       = "FmiS3Channel"
    effect    = "Allow"
    actions   = ["s3:PutObject", "s3:GetObject", "s3:DeleteObject"]
    resources = ["${local.runs_bucket_arn}/runs/*/fmi/*"]
  }

  statement {
    # FMI lists a channel's objects by prefix (never the whole bucket).
    sid       = "ListFmiChannel"
    effect    = "Allow"
    actions   = ["s3:ListBucket"]
    resources = [local.runs_bucket_arn]

    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values   = ["runs/*/fmi/*"]
    }
  }
}

data "aws_iam_policy_document" "summarize" {
  source_policy_documents = [data.aws_iam_policy_document.function_common["summarize"].json]

  statement {
    sid       = "ReadWriteRuns"
    effect    = "Allow"
    actions   = ["s3:GetObject", "s3:PutObject"]
    resources = ["${local.runs_bucket_arn}/runs/*"]
  }

  statement {
    sid       = "ListRuns"
    effect    = "Allow"
    actions   = ["s3:ListBucket"]
    resources = [local.runs_bucket_arn]

    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values   = ["runs/*"]
    }
  }

  statement {
    sid       = "WriteResults"
    effect    = "Allow"
    actions   = ["s3:PutObject"]
    resources = [for p in var.result_prefixes : "${local.runs_bucket_arn}/${p}"]
  }
}

locals {
  function_policies = {
    init      = data.aws_iam_policy_document.init.json
    executor  = data.aws_iam_policy_document.executor.json
    summarize = data.aws_iam_policy_document.summarize.json
  }
}

resource "aws_iam_role_policy" "function" {
  for_each = local.function_policies

  name   = "${var.name}-${each.key}"
  role   = aws_iam_role.function[each.key].id
  policy = each.value
}

data "aws_iam_policy_document" "states_assume" {
  statement {
    effect  = "Allow"
    actions = ["sts:AssumeRole"]

    principals {
      type        = "Service"
      identifiers = ["states.amazonaws.com"]
    }

    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account_id]
    }
  }
}

resource "aws_iam_role" "state_machine" {
  name               = "${var.name}-state-machine"
  description        = "CosmicAI state machine: invoke its three functions, read items, write Map results, run its child executions"
  assume_role_policy = data.aws_iam_policy_document.states_assume.json
  tags               = var.tags
}

data "aws_iam_policy_document" "state_machine" {
  statement {
    sid     = "InvokeTheThreeFunctions"
    effect  = "Allow"
    actions = ["lambda:InvokeFunction"]
    resources = [
      aws_lambda_function.zip["init"].arn,
      aws_lambda_function.executor.arn,
      # a run started with an executor_qualifier (`cosmicai tune --aws`: a version of its own)
      "${aws_lambda_function.executor.arn}:*",
      aws_lambda_function.zip["summarize"].arn,
    ]
  }

  statement {
    sid       = "ReadItems"
    effect    = "Allow"
    actions   = ["s3:GetObject"]
    resources = ["${local.runs_bucket_arn}/runs/*/items.json"]
  }

  statement {
    # ResultWriter writes the Map run's manifest and result files (the template's ResultWriter
    # prefix) with multipart uploads.
    sid       = "WriteMapResults"
    effect    = "Allow"
    actions   = ["s3:PutObject", "s3:GetObject", "s3:ListMultipartUploadParts", "s3:AbortMultipartUpload"]
    resources = ["${local.runs_bucket_arn}/runs/map-results/*"]
  }

  statement {
    # The template's RecordFailure state keeps a failed rank's error beside the rank results.
    sid       = "WriteRankFailures"
    effect    = "Allow"
    actions   = ["s3:PutObject"]
    resources = ["${local.runs_bucket_arn}/runs/*/failures/*"]
  }

  statement {
    # The Distributed Map starts its child executions on this state machine...
    sid       = "StartChildExecutions"
    effect    = "Allow"
    actions   = ["states:StartExecution"]
    resources = [local.state_machine_arn]
  }

  statement {
    # ...and follows or stops them.
    sid       = "FollowChildExecutions"
    effect    = "Allow"
    actions   = ["states:DescribeExecution", "states:StopExecution"]
    resources = ["arn:${local.partition}:states:${local.region}:${local.account_id}:execution:${var.state_machine_name}/*"]
  }

  statement {
    # CloudWatch Logs delivery for Step Functions, as AWS documents it (no resource-level permissions).
    sid    = "LogDelivery"
    effect = "Allow"
    actions = [
      "logs:CreateLogDelivery",
      "logs:GetLogDelivery",
      "logs:UpdateLogDelivery",
      "logs:DeleteLogDelivery",
      "logs:ListLogDeliveries",
      "logs:PutResourcePolicy",
      "logs:DescribeResourcePolicies",
      "logs:DescribeLogGroups",
    ]
    resources = ["*"]
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

  dynamic "statement" {
    for_each = var.xray_tracing ? ["xray"] : []
    content {
      sid       = "XRayWrite"
      effect    = "Allow"
      actions   = ["xray:PutTraceSegments", "xray:PutTelemetryRecords", "xray:GetSamplingRules", "xray:GetSamplingTargets"]
      resources = ["*"]
    }
  }
}

resource "aws_iam_role_policy" "state_machine" {
  name   = "${var.name}-state-machine"
  role   = aws_iam_role.state_machine.id
  policy = data.aws_iam_policy_document.state_machine.json
}
