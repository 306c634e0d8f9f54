"""`unitchaos serve` and `chaos`: the Chaos Monkey (and AWS) API on groups of instances,
and its client."""
from .. import progress
from ..chaos import aws_api, chaos_api, chaos_client, groups
from ..errors import UserError
from ..lab.lab import Lab
from .options import check_units, variant_options


def add_serve(sub) -> None:
    serve = sub.add_parser("serve", help="boot groups of instances and serve the Chaos Monkey API on them")
    serve.add_argument("--group", action="append", required=True, metavar="NAME:SIZE",
                       help="a group of SIZE instances called NAME (repeatable)")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--username", default=None)
    serve.add_argument("--password", default=None)
    serve.add_argument("--detach-fault", default="yank", help="what DetachVolumes does: yank or unplug")
    serve.add_argument("--aws", action="store_true",
                       help="also answer EC2, Auto Scaling and ELBv2 query requests (POST /) on the same port, "
                            "for AWS_ENDPOINT_URL (the AWS CLI, boto3, chaosaws); SigV4 with --username as the "
                            "access key id and --password as the secret key, any credentials without them")
    serve.add_argument("--health-check", default="deep",
                       help="what each group's load balancer checks: deep (:51680/health) or stock (:51678/v1/metadata)")
    variant_options(serve)
    serve.set_defaults(func=cmd_serve)


def cmd_serve(args) -> int:
    check_units(args)
    for spec in args.group:
        groups.parse_group(spec)
    with Lab() as lab:
        backend_groups: dict = {}
        backend = groups.LabBackend(backend_groups, args.detach_fault)
        aws = None
        if args.aws:
            if args.host not in ("127.0.0.1", "localhost", "::1"):
                raise UserError(f"--aws serves only the loopback, not {args.host}", "leave --host at 127.0.0.1")
            aws = aws_api.AwsApi(backend_groups, (args.username, args.password) if args.username else None)
            aws.on_call = lambda call: progress.say(f"AWS {call['action']} {call['status']} ({call['agent']})")
        # Bound before any VM boots: a port in use fails at once.
        server = chaos_api.ChaosServer(backend, host=args.host, port=args.port,
                                       username=args.username, password=args.password, aws=aws)
        try:
            backend_groups.update(groups.start_groups(lab, args.group, args.chain, args.fs, args.health_check))
            for name, group in backend_groups.items():
                progress.say(f"auto scaling group {name}: {', '.join(group.instances)}")
            print(f"Chaos Monkey API on {server.url}{chaos_api.API_PATH} (Ctrl-C to stop and tear down)", flush=True)
            if aws is not None:
                print(f"AWS endpoint (EC2, Auto Scaling, ELBv2): AWS_ENDPOINT_URL={server.url}", flush=True)
            server.serve_forever()
        finally:
            server.stop()
            for group in backend_groups.values():
                group.lb.stop()
                group.stop()
                for event in group.events:
                    progress.say(f"{group.name}: {event['action']} {event['instance'] or ''} {event.get('reason', '')}")
    return 0


def add_chaos(sub) -> None:
    chaos = sub.add_parser("chaos", help="Chaos Monkey client (the Go chaosmonkey CLI's flags)")
    chaos_client.add_arguments(chaos)
    chaos.set_defaults(func=chaos_client.run)
