# Pass-through variables are validated by the module that takes them (see each module's README).

variable "region" {
  description = "AWS region of every resource."
  type        = string
  default     = "us-east-1"

  validation {
    condition     = can(regex("^[a-z]{2}(-gov)?-[a-z]+-[0-9]$", var.region))
    error_message = "region must be an AWS region code such as \"us-east-1\"."
  }
}

variable "name" {
  description = "Name prefix of every resource (functions <name>-init/-executor/-summarize, state machine <name>-pipeline, roles, alarms)."
  type        = string
  default     = "cosmicai"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,28}[a-z0-9]$", var.name))
    error_message = "name must be 3-30 lowercase letters, digits or hyphens, starting with a letter (it prefixes names with length limits)."
  }
}

variable "tags" {
  description = "Tags added to every resource (besides Project and ManagedBy)."
  type        = map(string)
  default     = {}
}

# --- storage -----------------------------------------------------------------------------

variable "runs_bucket_name" {
  description = "Name of the bucket for code, data and runs (null: <name>-runs-<account id>-<region>)."
  type        = string
  default     = null
}

variable "runs_bucket_sse_algorithm" {
  description = "Encryption of the bucket's objects: \"AES256\" or \"aws:kms\"."
  type        = string
  default     = "AES256"
}

variable "runs_bucket_kms_key_arn" {
  description = "Customer KMS key of the bucket when runs_bucket_sse_algorithm is \"aws:kms\" (null: the AWS-managed key)."
  type        = string
  default     = null
}

variable "runs_versioning_enabled" {
  description = "Keep previous versions of overwritten objects in the bucket."
  type        = bool
  default     = true
}

variable "runs_expiration_days" {
  description = "Days after which objects under runs/ are deleted."
  type        = number
  default     = 30
}

variable "force_destroy" {
  description = "Let `terraform destroy` delete the bucket and the image repository with their contents."
  type        = bool
  default     = false
}

variable "data_sources" {
  description = "Extra buckets/prefixes holding partition files (the runs bucket's data/ prefix is always readable)."
  type = list(object({
    bucket = string
    prefix = string
  }))
  default = []
}

variable "code_prefixes" {
  description = "Key patterns in the runs bucket the executor may read (student scripts, model checkpoints)."
  type        = list(string)
  default     = ["code/*", "models/*"]
}

variable "result_prefixes" {
  description = "Key patterns in the runs bucket where combined results are written (payload result_path)."
  type        = list(string)
  default     = ["results/*"]
}

# --- registry and executor ----------------------------------------------------------------

variable "ecr_repository_name" {
  description = "Name of the executor image repository (null: <name>-executor)."
  type        = string
  default     = null
}

variable "ecr_keep_last_images" {
  description = "How many executor images the repository keeps."
  type        = number
  default     = 10
}

variable "executor_image_tag" {
  description = "Tag of the executor image in the repository (the image workflow tags by commit SHA)."
  type        = string

  validation {
    condition     = can(regex("^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$", var.executor_image_tag))
    error_message = "executor_image_tag must be a Docker tag (letters, digits, _ . -; at most 128), e.g. the commit SHA the image workflow pushed."
  }
}

variable "executor_memory_mb" {
  description = "Memory of the executor in MB (128-10240)."
  type        = number
  default     = 10240
}

variable "executor_timeout_s" {
  description = "Timeout of one executor invocation in seconds (1-900; at most 300 with map_execution_type \"EXPRESS\")."
  type        = number
  default     = 300
}

variable "executor_ephemeral_storage_mb" {
  description = "Size of the executor's /tmp in MB (512-10240)."
  type        = number
  default     = 2048
}

variable "executor_reserved_concurrency" {
  description = "Reserved concurrency of the executor (-1: none)."
  type        = number
  default     = -1
}

variable "executor_architecture" {
  description = "Instruction set of the executor image and Lambda function: \"x86_64\" or \"arm64\" (deploy the image workflow's SHA-x86_64 or SHA-arm64 tag to match)."
  type        = string
  default     = "x86_64"

  validation {
    condition     = contains(["x86_64", "arm64"], var.executor_architecture)
    error_message = "executor_architecture must be \"x86_64\" or \"arm64\"."
  }
}

variable "executor_engine_backend" {
  description = "Engine backend of ranks whose payload names none: \"onnxruntime\" (the model's ONNX export; faster cold start and inference) or \"torch\"."
  type        = string
  default     = "onnxruntime"

  validation {
    condition     = contains(["torch", "onnxruntime"], var.executor_engine_backend)
    error_message = "executor_engine_backend must be \"torch\" or \"onnxruntime\"."
  }
}

variable "init_zip_path" {
  description = "Deployment package of the init function (null: build/lambda/init.zip)."
  type        = string
  default     = null
}

variable "summarize_zip_path" {
  description = "Deployment package of the summarize function (null: build/lambda/summarize.zip)."
  type        = string
  default     = null
}

# --- pipeline ------------------------------------------------------------------------------

variable "log_retention_days" {
  description = "Retention of the functions' and the state machine's logs, in days."
  type        = number
  default     = 30
}

variable "map_execution_type" {
  description = "Execution type of the Distributed Map's children: \"EXPRESS\" (5 minutes at most per rank) or \"STANDARD\" (for longer ranks)."
  type        = string
  default     = "EXPRESS"
}

variable "rank_max_retries" {
  description = "How often a failed rank is retried."
  type        = number
  default     = 2
}

variable "xray_tracing" {
  description = "Enable X-Ray tracing of the state machine and functions."
  type        = bool
  default     = false
}

variable "alarm_sns_topic_arn" {
  description = "SNS topic for the alarms (failed or timed-out runs, rendezvous status checks); null: none."
  type        = string
  default     = null
}

# --- rendezvous ----------------------------------------------------------------------------

variable "rendezvous_cosmicai_package" {
  description = "Pinned pip requirement of the rendezvous server, e.g. \"cosmicai @ git+https://github.com/<owner>/<repo>@<tag>\"."
  type        = string
}

variable "rendezvous_protocol" {
  description = "TCPunch protocol of the server and of the executor's client: \"legacy\" or \"v2\" (must match the image's TCPUNCH_PROTOCOL)."
  type        = string
  default     = "legacy"
}

variable "rendezvous_port" {
  description = "Rendezvous port."
  type        = number
  default     = 10000
}

variable "rendezvous_health_port" {
  description = "HTTP health port of the rendezvous server."
  type        = number
  default     = 10001
}

variable "rendezvous_instance_type" {
  description = "EC2 instance type of the rendezvous host."
  type        = string
  default     = "t3.micro"
}

variable "rendezvous_architecture" {
  description = "Architecture of the rendezvous host's AMI, matching its instance type: \"x86_64\" or \"arm64\"."
  type        = string
  default     = "x86_64"
}

variable "rendezvous_allowed_cidrs" {
  description = "CIDRs allowed to reach the rendezvous port."
  type        = list(string)
  default     = ["0.0.0.0/0"]
}

variable "rendezvous_health_allowed_cidrs" {
  description = "CIDRs allowed to reach the health port (null: rendezvous_allowed_cidrs)."
  type        = list(string)
  default     = null
}

variable "rendezvous_restart_schedule" {
  description = "EventBridge Scheduler expression of the host's periodic reboot."
  type        = string
  default     = "cron(0 4 ? * SUN *)"
}

variable "rendezvous_vpc_id" {
  description = "VPC of the rendezvous host (null: the default VPC)."
  type        = string
  default     = null
}

variable "rendezvous_subnet_id" {
  description = "Public subnet of the rendezvous host (null: a default subnet)."
  type        = string
  default     = null
}

variable "rendezvous_route53_zone_id" {
  description = "Hosted zone of an optional DNS record for the host (with rendezvous_dns_name)."
  type        = string
  default     = null
}

variable "rendezvous_dns_name" {
  description = "Name of the optional DNS record, e.g. \"rendezvous.example.org\"."
  type        = string
  default     = null
}

# --- GitHub --------------------------------------------------------------------------------

variable "github_repository" {
  description = "GitHub repository (\"owner/name\") whose workflows push the image and start runs."
  type        = string
}

variable "github_branch" {
  description = "Branch whose workflows may assume the GitHub roles."
  type        = string
  default     = "main"
}

variable "github_existing_oidc_provider_arn" {
  description = "ARN of an existing GitHub OIDC provider in the account (null: create one)."
  type        = string
  default     = null
}
