data "aws_caller_identity" "current" {}
data "aws_partition" "current" {}
data "aws_region" "current" {}

locals {
  partition  = data.aws_partition.current.partition
  region     = data.aws_region.current.region
  account_id = data.aws_caller_identity.current.account_id

  # The init and summarize functions are python3.11 zips built by scripts/build_lambda_zips.py.
  build_dir = "${path.module}/../../../build/lambda"
  zip_functions = {
    init = {
      zip     = coalesce(var.init_zip_path, "${local.build_dir}/init.zip")
      memory  = var.init_memory_mb
      timeout = var.init_timeout_s
    }
    summarize = {
      zip     = coalesce(var.summarize_zip_path, "${local.build_dir}/summarize.zip")
      memory  = var.summarize_memory_mb
      timeout = var.summarize_timeout_s
    }
  }

  log_group_names = merge(
    { for k, fn in var.function_names : k => "/aws/lambda/${fn}" },
    { state_machine = "/aws/vendedlogs/states/${var.state_machine_name}" },
  )
  tracing_mode = var.xray_tracing ? "Active" : "PassThrough"

  # `cosmicai ... --aws --state-machine-arn ARN` reads the functions and the rendezvous server
  # from these tags of the state machine (tools/cosmicai/target.py).
  name_prefix = trimsuffix(var.function_names.init, "-init")
  state_machine_tags = {
    "cosmicai:name_prefix"         = local.name_prefix
    "cosmicai:rendezvous"          = "${var.rendezvous_host}:${var.rendezvous_port}"
    "cosmicai:rendezvous_protocol" = var.rendezvous_protocol
  }
}

resource "aws_cloudwatch_log_group" "this" {
  #checkov:skip=CKV_AWS_158:Logs hold REPORT lines and progress messages, no secrets; CloudWatch encrypts them at rest with its own keys.
  for_each = local.log_group_names

  name              = each.value
  retention_in_days = var.log_retention_days
  tags              = var.tags
}

resource "aws_lambda_function" "zip" {
  #checkov:skip=CKV_AWS_115:One invocation per run; reserving concurrency would take it from the account's pool for nothing.
  #checkov:skip=CKV_AWS_116:Invoked synchronously by Step Functions, which retries and records failures; a DLQ only applies to asynchronous invocations.
  #checkov:skip=CKV_AWS_117:Runs outside a VPC so it reaches S3 without a NAT gateway (about $32/month per AZ).
  #checkov:skip=CKV_AWS_173:The environment holds only the runs bucket name, no secrets.
  #checkov:skip=CKV_AWS_272:The zip is built by scripts/build_lambda_zips.py from this repository at apply time; code signing would need an AWS Signer profile per course.
  for_each = local.zip_functions

  function_name    = var.function_names[each.key]
  description      = "CosmicAI ${each.key} step"
  role             = aws_iam_role.function[each.key].arn
  runtime          = "python3.11"
  handler          = "handler.handler"
  architectures    = ["x86_64"]
  filename         = each.value.zip
  source_code_hash = filebase64sha256(each.value.zip)
  memory_size      = each.value.memory
  timeout          = each.value.timeout
  tags             = var.tags

  environment {
    variables = {
      COSMICAI_RUNS_BUCKET = var.runs_bucket_name
    }
  }

  logging_config {
    # Text keeps the platform's tab-separated REPORT lines that the metrics parser reads.
    log_format = "Text"
    log_group  = aws_cloudwatch_log_group.this[each.key].name
  }

  tracing_config {
    mode = local.tracing_mode
  }

  depends_on = [aws_iam_role_policy.function]
}

resource "aws_lambda_function" "executor" {
  #checkov:skip=CKV_AWS_116:Invoked synchronously by Step Functions, which retries and records failures; a DLQ only applies to asynchronous invocations.
  #checkov:skip=CKV_AWS_117:FMI's direct channel punches through NAT to peer Lambdas and the rendezvous host; outside a VPC no NAT gateway is needed.
  #checkov:skip=CKV_AWS_173:The environment holds only the rendezvous address, the bucket name and the engine backend, no secrets.
  #checkov:skip=CKV_AWS_272:Code signing does not apply to container images; the image is pinned by tag in an IMMUTABLE, scanned repository.
  function_name                  = var.function_names.executor
  description                    = "CosmicAI executor: inference for one rank"
  role                           = aws_iam_role.function["executor"].arn
  package_type                   = "Image"
  image_uri                      = var.executor_image_uri
  architectures                  = [var.executor_architecture]
  memory_size                    = var.executor_memory_mb
  timeout                        = var.executor_timeout_s
  reserved_concurrent_executions = var.executor_reserved_concurrency
  tags                           = var.tags

  ephemeral_storage {
    size = var.executor_ephemeral_storage_mb
  }

  environment {
    variables = merge(var.executor_extra_environment, {
      RENDEZVOUS_HOST         = var.rendezvous_host
      RENDEZVOUS_PORT         = tostring(var.rendezvous_port)
      RENDEZVOUS_PROTOCOL     = var.rendezvous_protocol
      COSMICAI_RUNS_BUCKET    = var.runs_bucket_name
      COSMICAI_ENGINE_BACKEND = var.executor_engine_backend
    })
  }

  logging_config {
    log_format = "Text"
    log_group  = aws_cloudwatch_log_group.this["executor"].name
  }

  tracing_config {
    mode = local.tracing_mode
  }

  depends_on = [aws_iam_role_policy.function]
}

resource "aws_sfn_state_machine" "this" {
  #checkov:skip=CKV_AWS_285:Every execution event is logged (level ALL); execution data stays out of the logs because inputs carry students' bucket paths.
  name     = var.state_machine_name
  role_arn = aws_iam_role.state_machine.arn
  type     = "STANDARD"
  tags     = merge(var.tags, local.state_machine_tags)

  # The one ASL template; the local cloud renders the same file with the same variables.
  definition = templatefile("${path.module}/state_machine.asl.json.tftpl", {
    init_function_arn      = aws_lambda_function.zip["init"].arn
    executor_function_arn  = aws_lambda_function.executor.arn
    summarize_function_arn = aws_lambda_function.zip["summarize"].arn
    map_execution_type     = var.map_execution_type
    rank_max_retries       = var.rank_max_retries
    runs_bucket            = var.runs_bucket_name
  })

  logging_configuration {
    log_destination        = "${aws_cloudwatch_log_group.this["state_machine"].arn}:*"
    include_execution_data = false
    level                  = "ALL"
  }

  tracing_configuration {
    enabled = var.xray_tracing
  }

  lifecycle {
    precondition {
      condition     = alltrue([for role, fn in var.function_names : fn == "${local.name_prefix}-${role}"])
      error_message = "function_names must share one prefix, PREFIX-init, PREFIX-executor and PREFIX-summarize: the state machine's cosmicai:name_prefix tag names them so."
    }
  }

  depends_on = [aws_iam_role_policy.state_machine]
}

resource "aws_cloudwatch_metric_alarm" "executions" {
  for_each = {
    failed    = "ExecutionsFailed"
    timed-out = "ExecutionsTimedOut"
  }

  alarm_name          = "${var.name}-executions-${each.key}"
  alarm_description   = "A CosmicAI run of ${var.state_machine_name} ${replace(each.key, "-", " ")} (metric ${each.value})."
  namespace           = "AWS/States"
  metric_name         = each.value
  statistic           = "Sum"
  period              = 300
  evaluation_periods  = 1
  threshold           = 0
  comparison_operator = "GreaterThanThreshold"
  treat_missing_data  = "notBreaching"
  dimensions          = { StateMachineArn = aws_sfn_state_machine.this.arn }
  alarm_actions       = var.alarm_sns_topic_arn == null ? [] : [var.alarm_sns_topic_arn]
  tags                = var.tags
}
