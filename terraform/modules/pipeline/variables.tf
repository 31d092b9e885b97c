variable "name" {
  description = "Name prefix of the IAM roles and alarms of this module."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,38}[a-z0-9]$", var.name))
    error_message = "name must be 3-40 lowercase letters, digits or hyphens, starting with a letter, e.g. \"cosmicai\"."
  }
}

variable "state_machine_name" {
  description = "Name of the Step Functions state machine."
  type        = string

  validation {
    condition     = can(regex("^[A-Za-z0-9_-]{1,80}$", var.state_machine_name))
    error_message = "state_machine_name must be 1-80 letters, digits, hyphens or underscores."
  }
}

variable "function_names" {
  description = "Names of the three Lambda functions: init, executor and summarize."
  type = object({
    init      = string
    executor  = string
    summarize = string
  })

  validation {
    condition     = alltrue([for n in values(var.function_names) : can(regex("^[A-Za-z0-9_-]{1,64}$", n))])
    error_message = "Each function name must be 1-64 letters, digits, hyphens or underscores."
  }

  validation {
    condition     = length(distinct(values(var.function_names))) == 3
    error_message = "The init, executor and summarize functions need three different names."
  }
}

variable "init_zip_path" {
  description = "Deployment package of the init function (null: build/lambda/init.zip at the repository root, written by scripts/build_lambda_zips.py)."
  type        = string
  default     = null

  validation {
    condition     = var.init_zip_path == null || endswith(coalesce(var.init_zip_path, "x.zip"), ".zip")
    error_message = "init_zip_path must be the path of a .zip file, or null for the build output."
  }
}

variable "summarize_zip_path" {
  description = "Deployment package of the summarize function (null: build/lambda/summarize.zip at the repository root, written by scripts/build_lambda_zips.py)."
  type        = string
  default     = null

  validation {
    condition     = var.summarize_zip_path == null || endswith(coalesce(var.summarize_zip_path, "x.zip"), ".zip")
    error_message = "summarize_zip_path must be the path of a .zip file, or null for the build output."
  }
}

variable "init_memory_mb" {
  description = "Memory of the init function in MB (Lambda allows 128-10240)."
  type        = number
  default     = 512

  validation {
    condition     = var.init_memory_mb >= 128 && var.init_memory_mb <= 10240 && floor(var.init_memory_mb) == var.init_memory_mb
    error_message = "init_memory_mb must be a whole number of MB between 128 and 10240 (Lambda's limits)."
  }
}

variable "init_timeout_s" {
  description = "Timeout of the init function in seconds (Lambda allows 1-900)."
  type        = number
  default     = 60

  validation {
    condition     = var.init_timeout_s >= 1 && var.init_timeout_s <= 900 && floor(var.init_timeout_s) == var.init_timeout_s
    error_message = "init_timeout_s must be a whole number of seconds between 1 and 900 (Lambda's limits)."
  }
}

variable "summarize_memory_mb" {
  description = "Memory of the summarize function in MB (Lambda allows 128-10240)."
  type        = number
  default     = 1024

  validation {
    condition     = var.summarize_memory_mb >= 128 && var.summarize_memory_mb <= 10240 && floor(var.summarize_memory_mb) == var.summarize_memory_mb
    error_message = "summarize_memory_mb must be a whole number of MB between 128 and 10240 (Lambda's limits)."
  }
}

variable "summarize_timeout_s" {
  description = "Timeout of the summarize function in seconds (Lambda allows 1-900)."
  type        = number
  default     = 300

  validation {
    condition     = var.summarize_timeout_s >= 1 && var.summarize_timeout_s <= 900 && floor(var.summarize_timeout_s) == var.summarize_timeout_s
    error_message = "summarize_timeout_s must be a whole number of seconds between 1 and 900 (Lambda's limits)."
  }
}

variable "executor_image_uri" {
  description = "ECR image of the executor: <account>.dkr.ecr.<region>.amazonaws.com/<repository>:<tag> or @sha256:<digest>."
  type        = string

  validation {
    condition     = can(regex("^[0-9]{12}\\.dkr\\.ecr\\.[a-z0-9-]+\\.amazonaws\\.com(\\.cn)?/[a-z0-9._/-]+(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}|@sha256:[0-9a-f]{64})$", var.executor_image_uri))
    error_message = "executor_image_uri must be an ECR image with a tag or digest, e.g. 123456789012.dkr.ecr.us-east-1.amazonaws.com/cosmicai-executor:3f2c1d0."
  }
}

variable "executor_memory_mb" {
  description = "Memory of the executor in MB; CPU scales with it (about 1 vCPU per 1769 MB, 6 vCPUs at 10240). Lambda allows 128-10240."
  type        = number
  default     = 10240

  validation {
    condition     = var.executor_memory_mb >= 128 && var.executor_memory_mb <= 10240 && floor(var.executor_memory_mb) == var.executor_memory_mb
    error_message = "executor_memory_mb must be a whole number of MB between 128 and 10240 (Lambda's limits)."
  }
}

variable "executor_timeout_s" {
  description = "Timeout of one executor invocation in seconds. Lambda allows 1-900, EXPRESS children (map_execution_type) at most 300; a new function's default of 3 s is far too short for inference."
  type        = number
  default     = 300

  validation {
    condition     = var.executor_timeout_s >= 1 && var.executor_timeout_s <= 900 && floor(var.executor_timeout_s) == var.executor_timeout_s
    error_message = "executor_timeout_s must be a whole number of seconds between 1 and 900 (Lambda's limits)."
  }

  validation {
    condition     = var.map_execution_type != "EXPRESS" || var.executor_timeout_s <= 300
    error_message = "executor_timeout_s is ${var.executor_timeout_s}, but AWS stops an EXPRESS child workflow after 5 minutes (300 s), so a longer rank would be cut off: lower executor_timeout_s to 300 or less, or set map_execution_type = \"STANDARD\" for ranks that need longer."
  }
}

variable "executor_ephemeral_storage_mb" {
  description = "Size of the executor's /tmp in MB (Lambda allows 512-10240; above 512 is billed per GB-second)."
  type        = number
  default     = 2048

  validation {
    condition     = var.executor_ephemeral_storage_mb >= 512 && var.executor_ephemeral_storage_mb <= 10240 && floor(var.executor_ephemeral_storage_mb) == var.executor_ephemeral_storage_mb
    error_message = "executor_ephemeral_storage_mb must be a whole number of MB between 512 and 10240 (Lambda's limits)."
  }
}

variable "executor_reserved_concurrency" {
  description = "Concurrent executions reserved for the executor (-1: no reservation, share the account's pool; Lambda keeps 100 of the account's concurrency unreserved)."
  type        = number
  default     = -1

  validation {
    condition     = var.executor_reserved_concurrency == -1 || (var.executor_reserved_concurrency >= 1 && var.executor_reserved_concurrency <= 10000 && floor(var.executor_reserved_concurrency) == var.executor_reserved_concurrency)
    error_message = "executor_reserved_concurrency must be -1 (no reservation) or a whole number between 1 and 10000; 0 would throttle every rank."
  }
}

variable "executor_architecture" {
  description = "Instruction set of the executor, matching the image: \"x86_64\" or \"arm64\" (arm64 is 20% cheaper per GB-second)."
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

variable "executor_extra_environment" {
  description = "Additional environment variables of the executor (the five set by this module cannot be overridden)."
  type        = map(string)
  default     = {}

  validation {
    condition     = length(setintersection(keys(var.executor_extra_environment), ["RENDEZVOUS_HOST", "RENDEZVOUS_PORT", "RENDEZVOUS_PROTOCOL", "COSMICAI_RUNS_BUCKET"])) == 0
    error_message = "executor_extra_environment must not set RENDEZVOUS_HOST, RENDEZVOUS_PORT, RENDEZVOUS_PROTOCOL or COSMICAI_RUNS_BUCKET; use the module's variables."
  }
}

variable "rendezvous_host" {
  description = "Host name or IP of the rendezvous server (the executor's RENDEZVOUS_HOST)."
  type        = string

  validation {
    condition     = can(regex("^[A-Za-z0-9.-]{1,253}$", var.rendezvous_host))
    error_message = "rendezvous_host must be a host name or IPv4 address."
  }
}

variable "rendezvous_port" {
  description = "TCP port of the rendezvous server (the executor's RENDEZVOUS_PORT)."
  type        = number
  default     = 10000

  validation {
    condition     = var.rendezvous_port >= 1 && var.rendezvous_port <= 65535 && floor(var.rendezvous_port) == var.rendezvous_port
    error_message = "rendezvous_port must be a whole number between 1 and 65535."
  }
}

variable "rendezvous_protocol" {
  description = "TCPunch protocol of the rendezvous server, \"legacy\" or \"v2\" (the executor's RENDEZVOUS_PROTOCOL)."
  type        = string
  default     = "legacy"

  validation {
    condition     = contains(["legacy", "v2"], var.rendezvous_protocol)
    error_message = "rendezvous_protocol must be \"legacy\" or \"v2\"."
  }
}

variable "runs_bucket_name" {
  description = "Bucket holding runs/<run_id>/ (payloads, items, rank results, Map results), code and results."
  type        = string

  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", var.runs_bucket_name))
    error_message = "runs_bucket_name must be a valid S3 bucket name."
  }
}

variable "kms_key_arn" {
  description = "KMS key that encrypts the runs bucket, if it uses aws:kms with a customer key (the roles get Decrypt and GenerateDataKey on it); null otherwise."
  type        = string
  default     = null

  validation {
    condition     = var.kms_key_arn == null || can(regex("^arn:aws[a-z-]*:kms:[a-z0-9-]+:[0-9]{12}:key/.+$", var.kms_key_arn))
    error_message = "kms_key_arn must be a KMS key ARN or null."
  }
}

variable "data_sources" {
  description = "Buckets and key prefixes the init function lists and the init and executor functions read partition files from."
  type = list(object({
    bucket = string
    prefix = string
  }))
  default = []

  validation {
    condition     = alltrue([for d in var.data_sources : can(regex("^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", d.bucket)) && !startswith(d.prefix, "/") && !strcontains(d.prefix, "*")])
    error_message = "Each data source needs a valid bucket name and a key prefix without a leading '/' or '*' (e.g. {bucket = \"my-data\", prefix = \"sdss/partitions/\"})."
  }
}

variable "code_prefixes" {
  description = "Key patterns in the runs bucket the executor may read: student scripts and model checkpoints."
  type        = list(string)
  default     = ["code/*", "models/*"]

  validation {
    condition     = alltrue([for p in var.code_prefixes : length(p) > 0 && !startswith(p, "/") && !startswith(p, "runs/") && p != "*"])
    error_message = "code_prefixes must be key patterns such as \"code/*\": not empty, not the whole bucket (\"*\"), not under runs/, no leading '/'."
  }
}

variable "result_prefixes" {
  description = "Key patterns in the runs bucket where summarize may write combined results (the payload's result_path must fall under one)."
  type        = list(string)
  default     = ["results/*"]

  validation {
    condition     = length(var.result_prefixes) > 0 && alltrue([for p in var.result_prefixes : length(p) > 0 && !startswith(p, "/") && p != "*"])
    error_message = "result_prefixes must be a non-empty list of key patterns such as \"results/*\" (not \"*\", no leading '/')."
  }
}

variable "log_retention_days" {
  description = "Retention of the functions' and the state machine's log groups, in days (a value CloudWatch Logs accepts)."
  type        = number
  default     = 30

  validation {
    condition     = contains([1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653], var.log_retention_days)
    error_message = "log_retention_days must be one of 1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653."
  }
}

variable "map_execution_type" {
  description = "Execution type of the Distributed Map's child workflows, one per rank: \"EXPRESS\" (AWS stops it after 5 minutes, so executor_timeout_s <= 300) or \"STANDARD\" (for longer ranks)."
  type        = string
  default     = "EXPRESS"

  validation {
    condition     = contains(["EXPRESS", "STANDARD"], var.map_execution_type)
    error_message = "map_execution_type must be \"EXPRESS\" or \"STANDARD\"."
  }
}

variable "rank_max_retries" {
  description = "How often a failed rank is retried (besides Lambda service errors, which are always retried with backoff)."
  type        = number
  default     = 2

  validation {
    condition     = var.rank_max_retries >= 0 && var.rank_max_retries <= 10 && floor(var.rank_max_retries) == var.rank_max_retries
    error_message = "rank_max_retries must be a whole number between 0 and 10."
  }
}

variable "xray_tracing" {
  description = "Enable AWS X-Ray tracing of the state machine and the functions."
  type        = bool
  default     = false
}

variable "alarm_sns_topic_arn" {
  description = "SNS topic notified when executions fail or time out (null: the alarms are only visible in CloudWatch)."
  type        = string
  default     = null

  validation {
    condition     = var.alarm_sns_topic_arn == null || can(regex("^arn:aws[a-z-]*:sns:[a-z0-9-]+:[0-9]{12}:.+$", var.alarm_sns_topic_arn))
    error_message = "alarm_sns_topic_arn must be an SNS topic ARN or null."
  }
}

variable "tags" {
  description = "Tags added to every resource of this module."
  type        = map(string)
  default     = {}
}
