data "aws_caller_identity" "current" {}
data "aws_partition" "current" {}

locals {
  account_id = data.aws_caller_identity.current.account_id
  partition  = data.aws_partition.current.partition

  runs_bucket_name = coalesce(var.runs_bucket_name, "${var.name}-runs-${local.account_id}-${var.region}")
  function_names = {
    init      = "${var.name}-init"
    executor  = "${var.name}-executor"
    summarize = "${var.name}-summarize"
  }
  state_machine_name = "${var.name}-pipeline"
  # Built from the name rather than read from the pipeline module, so that the GitHub roles can
  # be created before the first executor image exists (see README: first apply).
  state_machine_arn = "arn:${local.partition}:states:${var.region}:${local.account_id}:stateMachine:${local.state_machine_name}"
  kms_key_arn       = var.runs_bucket_sse_algorithm == "aws:kms" ? var.runs_bucket_kms_key_arn : null
}

module "storage" {
  source = "./modules/storage"

  bucket_name          = local.runs_bucket_name
  force_destroy        = var.force_destroy
  sse_algorithm        = var.runs_bucket_sse_algorithm
  kms_key_arn          = var.runs_bucket_kms_key_arn
  versioning_enabled   = var.runs_versioning_enabled
  runs_expiration_days = var.runs_expiration_days
}

module "registry" {
  source = "./modules/registry"

  repository_name             = coalesce(var.ecr_repository_name, "${var.name}-executor")
  keep_last_images            = var.ecr_keep_last_images
  lambda_function_name_prefix = "${var.name}-"
  force_delete                = var.force_destroy
}

module "rendezvous" {
  source = "./modules/rendezvous"

  name                 = var.name
  cosmicai_package     = var.rendezvous_cosmicai_package
  protocol             = var.rendezvous_protocol
  port                 = var.rendezvous_port
  health_port          = var.rendezvous_health_port
  instance_type        = var.rendezvous_instance_type
  architecture         = var.rendezvous_architecture
  allowed_cidrs        = var.rendezvous_allowed_cidrs
  health_allowed_cidrs = var.rendezvous_health_allowed_cidrs
  restart_schedule     = var.rendezvous_restart_schedule
  vpc_id               = var.rendezvous_vpc_id
  subnet_id            = var.rendezvous_subnet_id
  route53_zone_id      = var.rendezvous_route53_zone_id
  dns_name             = var.rendezvous_dns_name
  alarm_sns_topic_arn  = var.alarm_sns_topic_arn
}

module "pipeline" {
  source = "./modules/pipeline"

  name               = var.name
  state_machine_name = local.state_machine_name
  function_names     = local.function_names
  init_zip_path      = var.init_zip_path
  summarize_zip_path = var.summarize_zip_path

  executor_image_uri            = "${module.registry.repository_url}:${var.executor_image_tag}"
  executor_memory_mb            = var.executor_memory_mb
  executor_timeout_s            = var.executor_timeout_s
  executor_ephemeral_storage_mb = var.executor_ephemeral_storage_mb
  executor_reserved_concurrency = var.executor_reserved_concurrency
  executor_architecture         = var.executor_architecture
  executor_engine_backend       = var.executor_engine_backend

  rendezvous_host     = module.rendezvous.host
  rendezvous_port     = module.rendezvous.port
  rendezvous_protocol = module.rendezvous.protocol

  runs_bucket_name = module.storage.bucket_name
  kms_key_arn      = local.kms_key_arn
  data_sources     = concat([{ bucket = local.runs_bucket_name, prefix = "data/" }], var.data_sources)
  code_prefixes    = var.code_prefixes
  result_prefixes  = var.result_prefixes

  log_retention_days  = var.log_retention_days
  map_execution_type  = var.map_execution_type
  rank_max_retries    = var.rank_max_retries
  xray_tracing        = var.xray_tracing
  alarm_sns_topic_arn = var.alarm_sns_topic_arn
}

module "github_oidc" {
  source = "./modules/github_oidc"

  name                       = var.name
  repository                 = var.github_repository
  branch                     = var.github_branch
  existing_oidc_provider_arn = var.github_existing_oidc_provider_arn
  ecr_repository_arn         = module.registry.repository_arn
  state_machine_arn          = local.state_machine_arn
  runs_bucket_name           = local.runs_bucket_name
  result_prefixes            = var.result_prefixes
  log_group_arns             = values(module.pipeline.log_group_arns)
  kms_key_arn                = local.kms_key_arn
}
