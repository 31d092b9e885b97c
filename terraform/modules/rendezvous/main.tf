data "aws_partition" "current" {}
data "aws_region" "current" {}
data "aws_caller_identity" "current" {}

data "aws_ssm_parameter" "al2023_ami" {
  name = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-${var.architecture}"
}

data "aws_vpc" "default" {
  count   = var.vpc_id == null ? 1 : 0
  default = true
}

data "aws_subnets" "default" {
  count = var.subnet_id == null ? 1 : 0

  filter {
    name   = "vpc-id"
    values = [local.vpc_id]
  }

  filter {
    name   = "default-for-az"
    values = ["true"]
  }
}

locals {
  vpc_id       = var.vpc_id != null ? var.vpc_id : data.aws_vpc.default[0].id
  subnet_id    = var.subnet_id != null ? var.subnet_id : sort(data.aws_subnets.default[0].ids)[0]
  health_cidrs = var.health_allowed_cidrs != null ? var.health_allowed_cidrs : var.allowed_cidrs
  # One ingress rule per (port, CIDR): the rendezvous port and the health port, nothing else.
  ingress = merge(
    { for c in var.allowed_cidrs : "rendezvous ${c}" => { port = var.port, cidr = c, what = "TCPunch rendezvous (${var.protocol})" } },
    { for c in local.health_cidrs : "health ${c}" => { port = var.health_port, cidr = c, what = "rendezvous health endpoint" } },
  )
  # The server's extra only (standard library): "cosmicai==1.0" -> "cosmicai[rendezvous]==1.0".
  requirement = "cosmicai[rendezvous]${trimprefix(var.cosmicai_package, "cosmicai")}"
  host        = var.dns_name != null ? trimsuffix(var.dns_name, ".") : aws_eip.this.public_ip
  partition   = data.aws_partition.current.partition
  region      = data.aws_region.current.region
}

resource "aws_security_group" "this" {
  name        = "${var.name}-rendezvous"
  description = "CosmicAI rendezvous host: the rendezvous and health ports only, no SSH (use SSM Session Manager)"
  vpc_id      = local.vpc_id
  tags        = merge(var.tags, { Name = "${var.name}-rendezvous" })
}

resource "aws_vpc_security_group_ingress_rule" "this" {
  for_each = local.ingress

  security_group_id = aws_security_group.this.id
  description       = each.value.what
  ip_protocol       = "tcp"
  from_port         = each.value.port
  to_port           = each.value.port
  cidr_ipv4         = strcontains(each.value.cidr, ":") ? null : each.value.cidr
  cidr_ipv6         = strcontains(each.value.cidr, ":") ? each.value.cidr : null
  tags              = var.tags
}

resource "aws_vpc_security_group_egress_rule" "https" {
  security_group_id = aws_security_group.this.id
  description       = "HTTPS out: package installs (dnf, pip) and the SSM agent"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
  cidr_ipv4         = "0.0.0.0/0"
  tags              = var.tags
}

data "aws_iam_policy_document" "ec2_assume" {
  statement {
    effect  = "Allow"
    actions = ["sts:AssumeRole"]

    principals {
      type        = "Service"
      identifiers = ["ec2.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "instance" {
  name               = "${var.name}-rendezvous-instance"
  description        = "Rendezvous host: SSM Session Manager access only"
  assume_role_policy = data.aws_iam_policy_document.ec2_assume.json
  tags               = var.tags
}

resource "aws_iam_role_policy_attachment" "ssm_core" {
  role       = aws_iam_role.instance.name
  policy_arn = "arn:${local.partition}:iam::aws:policy/AmazonSSMManagedInstanceCore"
}

resource "aws_iam_instance_profile" "this" {
  name = "${var.name}-rendezvous"
  role = aws_iam_role.instance.name
  tags = var.tags
}

resource "aws_instance" "this" {
  #checkov:skip=CKV_AWS_126:Detailed monitoring is a variable (detailed_monitoring, about $2/month); 5-minute status checks are enough to trigger recovery.
  ami                         = data.aws_ssm_parameter.al2023_ami.insecure_value
  instance_type               = var.instance_type
  subnet_id                   = local.subnet_id
  vpc_security_group_ids      = [aws_security_group.this.id]
  iam_instance_profile        = aws_iam_instance_profile.this.name
  monitoring                  = var.detailed_monitoring
  ebs_optimized               = true
  user_data_replace_on_change = true
  user_data = templatefile("${path.module}/user_data.sh.tftpl", {
    requirement = local.requirement
    port        = var.port
    health_port = var.health_port
    protocol    = var.protocol
  })

  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
  }

  root_block_device {
    encrypted             = true
    volume_type           = "gp3"
    volume_size           = var.root_volume_size_gb
    delete_on_termination = true
  }

  tags = merge(var.tags, { Name = "${var.name}-rendezvous" })

  lifecycle {
    # A newer AMI would replace the host (and break running jobs); take it deliberately with
    # `terraform apply -replace=module.rendezvous.aws_instance.this`.
    ignore_changes = [ami]
  }
}

resource "aws_eip" "this" {
  domain   = "vpc"
  instance = aws_instance.this.id
  tags     = merge(var.tags, { Name = "${var.name}-rendezvous" })
}

resource "aws_route53_record" "this" {
  count = var.route53_zone_id == null ? 0 : 1

  zone_id = var.route53_zone_id
  name    = var.dns_name
  type    = "A"
  ttl     = 300
  records = [aws_eip.this.public_ip]
}

data "aws_iam_policy_document" "scheduler_assume" {
  statement {
    effect  = "Allow"
    actions = ["sts:AssumeRole"]

    principals {
      type        = "Service"
      identifiers = ["scheduler.amazonaws.com"]
    }

    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [data.aws_caller_identity.current.account_id]
    }
  }
}

data "aws_iam_policy_document" "reboot" {
  statement {
    sid       = "RebootTheRendezvousHostOnly"
    effect    = "Allow"
    actions   = ["ec2:RebootInstances"]
    resources = [aws_instance.this.arn]
  }
}

resource "aws_iam_role" "scheduler" {
  name               = "${var.name}-rendezvous-restart"
  description        = "EventBridge Scheduler: reboot the rendezvous host"
  assume_role_policy = data.aws_iam_policy_document.scheduler_assume.json
  tags               = var.tags
}

resource "aws_iam_role_policy" "reboot" {
  name   = "reboot-rendezvous-host"
  role   = aws_iam_role.scheduler.id
  policy = data.aws_iam_policy_document.reboot.json
}

resource "aws_scheduler_schedule" "restart" {
  #checkov:skip=CKV_AWS_297:The schedule's only input is the instance id; a customer-managed key would protect nothing.
  name                         = "${var.name}-rendezvous-restart"
  description                  = "Reboot the rendezvous host periodically so the server starts from a clean state"
  schedule_expression          = var.restart_schedule
  schedule_expression_timezone = var.restart_schedule_timezone

  flexible_time_window {
    mode = "OFF"
  }

  target {
    arn      = "arn:${local.partition}:scheduler:::aws-sdk:ec2:rebootInstances"
    role_arn = aws_iam_role.scheduler.arn
    input    = jsonencode({ InstanceIds = [aws_instance.this.id] })

    retry_policy {
      maximum_retry_attempts = 3
    }
  }
}

resource "aws_cloudwatch_metric_alarm" "system_status" {
  alarm_name          = "${var.name}-rendezvous-system-status"
  alarm_description   = "The rendezvous host's system status check failed: EC2 recovers it onto healthy hardware (same id, IP and volume)."
  namespace           = "AWS/EC2"
  metric_name         = "StatusCheckFailed_System"
  statistic           = "Maximum"
  period              = 60
  evaluation_periods  = 2
  threshold           = 0
  comparison_operator = "GreaterThanThreshold"
  dimensions          = { InstanceId = aws_instance.this.id }
  alarm_actions       = concat(["arn:${local.partition}:automate:${local.region}:ec2:recover"], var.alarm_sns_topic_arn == null ? [] : [var.alarm_sns_topic_arn])
  ok_actions          = var.alarm_sns_topic_arn == null ? [] : [var.alarm_sns_topic_arn]
  tags                = var.tags
}

resource "aws_cloudwatch_metric_alarm" "instance_status" {
  alarm_name          = "${var.name}-rendezvous-instance-status"
  alarm_description   = "The rendezvous host's instance status check failed: EC2 reboots it."
  namespace           = "AWS/EC2"
  metric_name         = "StatusCheckFailed_Instance"
  statistic           = "Maximum"
  period              = 60
  evaluation_periods  = 3
  threshold           = 0
  comparison_operator = "GreaterThanThreshold"
  dimensions          = { InstanceId = aws_instance.this.id }
  alarm_actions       = concat(["arn:${local.partition}:automate:${local.region}:ec2:reboot"], var.alarm_sns_topic_arn == null ? [] : [var.alarm_sns_topic_arn])
  ok_actions          = var.alarm_sns_topic_arn == null ? [] : [var.alarm_sns_topic_arn]
  tags                = var.tags
}
