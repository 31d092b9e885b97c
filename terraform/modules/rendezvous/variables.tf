variable "name" {
  description = "Name prefix of every resource of this module (instance, security group, roles, schedule, alarms)."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,38}[a-z0-9]$", var.name))
    error_message = "name must be 3-40 lowercase letters, digits or hyphens, starting with a letter, e.g. \"cosmicai\"."
  }
}

variable "instance_type" {
  description = "EC2 instance type of the rendezvous host; its architecture must match var.architecture (t3.* is x86_64, t4g.* is arm64)."
  type        = string
  default     = "t3.micro"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]*\\.[a-z0-9]+$", var.instance_type))
    error_message = "instance_type must look like \"t3.micro\" (family.size)."
  }
}

variable "architecture" {
  description = "CPU architecture of the Amazon Linux 2023 AMI, matching instance_type: \"x86_64\" or \"arm64\"."
  type        = string
  default     = "x86_64"

  validation {
    condition     = contains(["x86_64", "arm64"], var.architecture)
    error_message = "architecture must be \"x86_64\" or \"arm64\"."
  }
}

variable "vpc_id" {
  description = "VPC of the host (null: the account's default VPC)."
  type        = string
  default     = null

  validation {
    condition     = var.vpc_id == null || can(regex("^vpc-[0-9a-f]{8,17}$", var.vpc_id))
    error_message = "vpc_id must be a VPC id such as vpc-0123456789abcdef0, or null for the default VPC."
  }
}

variable "subnet_id" {
  description = "Public subnet of the host, in vpc_id (null: a default subnet of the default VPC). The subnet needs a route to an internet gateway."
  type        = string
  default     = null

  validation {
    condition     = var.subnet_id == null || can(regex("^subnet-[0-9a-f]{8,17}$", var.subnet_id))
    error_message = "subnet_id must be a subnet id such as subnet-0123456789abcdef0, or null."
  }

  validation {
    condition     = var.subnet_id == null || var.vpc_id != null
    error_message = "subnet_id needs vpc_id too (the security group is created in the subnet's VPC)."
  }
}

variable "port" {
  description = "TCP port of the rendezvous protocol (FMI's Direct channel connects here; FMI's default is 10000)."
  type        = number
  default     = 10000

  validation {
    condition     = var.port >= 1024 && var.port <= 65535 && floor(var.port) == var.port
    error_message = "port must be a whole number between 1024 and 65535 (the service runs unprivileged)."
  }
}

variable "health_port" {
  description = "TCP port of the HTTP health endpoint (GET /health)."
  type        = number
  default     = 10001

  validation {
    condition     = var.health_port >= 1024 && var.health_port <= 65535 && floor(var.health_port) == var.health_port
    error_message = "health_port must be a whole number between 1024 and 65535."
  }

  validation {
    condition     = var.health_port != var.port
    error_message = "health_port must differ from port."
  }
}

variable "protocol" {
  description = "TCPunch wire protocol the server speaks: \"legacy\" or \"v2\". It must match the client compiled into the executor image (its TCPUNCH_PROTOCOL build argument)."
  type        = string
  default     = "legacy"

  validation {
    condition     = contains(["legacy", "v2"], var.protocol)
    error_message = "protocol must be \"legacy\" or \"v2\"."
  }
}

variable "cosmicai_package" {
  description = "Pinned pip requirement the host installs the server from: \"cosmicai==<version>\" or \"cosmicai @ git+https://github.com/<owner>/<repo>@<tag or commit>\". The module adds the rendezvous extra (standard library only: no PyTorch)."
  type        = string

  validation {
    condition     = can(regex("^cosmicai(==[0-9A-Za-z.+!-]+| @ git\\+https://[A-Za-z0-9./_-]+@[A-Za-z0-9._/-]+)$", var.cosmicai_package))
    error_message = "cosmicai_package must pin a version, e.g. \"cosmicai==0.1.0\" or \"cosmicai @ git+https://github.com/org/cosmicai@v0.1.0\" (no branches without a ref, no spaces or quotes, no extras: the module installs cosmicai[rendezvous])."
  }
}

variable "allowed_cidrs" {
  description = "IPv4/IPv6 CIDRs allowed to reach the rendezvous port. Lambda functions outside a VPC connect from AWS public addresses, so the default is open; narrow it to the region's Lambda ranges if you can."
  type        = list(string)
  default     = ["0.0.0.0/0"]

  validation {
    condition     = length(var.allowed_cidrs) > 0 && alltrue([for c in var.allowed_cidrs : can(cidrhost(c, 0))])
    error_message = "allowed_cidrs must be a non-empty list of CIDR blocks such as \"203.0.113.0/24\"."
  }
}

variable "health_allowed_cidrs" {
  description = "CIDRs allowed to reach the health port (null: the same as allowed_cidrs; [] closes it to the outside)."
  type        = list(string)
  default     = null

  validation {
    condition     = var.health_allowed_cidrs == null || alltrue([for c in coalesce(var.health_allowed_cidrs, []) : can(cidrhost(c, 0))])
    error_message = "health_allowed_cidrs must be a list of CIDR blocks, or null."
  }
}

variable "root_volume_size_gb" {
  description = "Size of the encrypted gp3 root volume in GiB (the AL2023 AMI needs 8; the server's environment is a few MB, standard library only)."
  type        = number
  default     = 16

  validation {
    condition     = var.root_volume_size_gb >= 8 && var.root_volume_size_gb <= 1024 && floor(var.root_volume_size_gb) == var.root_volume_size_gb
    error_message = "root_volume_size_gb must be a whole number between 8 and 1024."
  }
}

variable "detailed_monitoring" {
  description = "Enable 1-minute EC2 detailed monitoring (about $2/month); basic 5-minute metrics drive the alarms otherwise."
  type        = bool
  default     = false
}

variable "restart_schedule" {
  description = "EventBridge Scheduler expression of the periodic reboot that clears the server's state, e.g. weekly on Sunday 04:00."
  type        = string
  default     = "cron(0 4 ? * SUN *)"

  validation {
    condition     = can(regex("^(cron\\([^)]+\\)|rate\\([0-9]+ (minute|minutes|hour|hours|day|days)\\))$", var.restart_schedule))
    error_message = "restart_schedule must be an EventBridge Scheduler cron(...) or rate(...) expression, e.g. \"cron(0 4 ? * SUN *)\"."
  }
}

variable "restart_schedule_timezone" {
  description = "IANA time zone the restart_schedule is evaluated in."
  type        = string
  default     = "UTC"

  validation {
    condition     = can(regex("^[A-Za-z_]+(/[A-Za-z0-9_+-]+)*$", var.restart_schedule_timezone))
    error_message = "restart_schedule_timezone must be an IANA zone name such as \"UTC\" or \"America/Chicago\"."
  }
}

variable "route53_zone_id" {
  description = "Route 53 hosted zone for an optional A record pointing at the Elastic IP (null: no record)."
  type        = string
  default     = null

  validation {
    condition     = (var.route53_zone_id == null) == (var.dns_name == null)
    error_message = "route53_zone_id and dns_name go together: set both for a DNS record, or neither."
  }
}

variable "dns_name" {
  description = "Fully qualified name of the optional A record, e.g. \"rendezvous.example.org\" (with route53_zone_id)."
  type        = string
  default     = null

  validation {
    condition     = var.dns_name == null || can(regex("^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\\.)+[a-z]{2,}\\.?$", var.dns_name))
    error_message = "dns_name must be a lowercase fully qualified domain name, e.g. \"rendezvous.example.org\"."
  }
}

variable "alarm_sns_topic_arn" {
  description = "SNS topic notified when a status check fails (null: the alarms only recover or reboot the host)."
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
