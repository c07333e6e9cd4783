//! Nodes behind NAT, with the real binary in network namespaces: an
//! "internet" bridge (10.78.0.0/24) with two public nodes, and three home
//! networks, each behind a router namespace that translates its traffic with
//! the system's firewall: two with `iptables -t nat ... MASQUERADE` (a
//! cone-like NAT, as most home routers are), one with `MASQUERADE
//! --random-fully` (a new random port for every destination: a symmetric
//! NAT, as carrier-grade NATs often are). Every node runs as the README
//! says, `--listen 0.0.0.0:7000`.
//!
//! Every node is a member of one private network (`--network-key`), admits
//! only the others' ids (`--allow`), and joins through a pinned address:
//! relays, hole punches and port mappings all work inside those rules, the
//! relays being members that carry ciphertext they cannot read.
//!
//! The test shows that
//! 1. the public nodes learn from dial-backs that they are reachable, and at
//!    which address; the home nodes learn that they are behind NAT;
//! 2. each home node reserves a slot at a public node and is known by that
//!    relay only: nobody knows it by its NAT's mapping;
//! 3. a fourth home's router runs miniupnpd (UPnP IGD): the node has it map
//!    its port, is then reachable at the router's address, and the mapping
//!    goes when the node stops;
//! 4. files move between every kind of place, and the path each transfer
//!    took is checked: public to public directly; from the symmetric NAT
//!    through the relay (a hole punch cannot work: its router picks a new
//!    port for every destination); between the cone NATs through the relay
//!    first, then directly once they punched a hole. It prints the
//!    throughput of each beside the direct public case.
//!
//! It needs root, iproute2 and iptables. Where any is missing or refused it
//! prints `skipping nat test: <reason>` and passes; `QUIC_PEER_REQUIRE_NAT=1`
//! makes that a failure (CI sets it where it installs iptables).

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::netns::{self, find_tool, Host, Namespaces, T};
use quic_peer::NodeId;

/// The UDP port every node listens on.
const PORT: u16 = 7000;
/// Public addresses, on the "internet" bridge.
const PUBLIC: [&str; 2] = ["10.78.0.1", "10.78.0.2"];
/// The home networks: a name, its router's public address, its prefix,
/// and what the router's masquerading adds.
const HOMES: [(&str, &str, u8, &[&str]); 3] = [
    ("cone1", "10.78.0.11", 1, &[]),
    ("cone2", "10.78.0.12", 2, &[]),
    ("symmetric", "10.78.0.13", 3, &["--random-fully"]),
];
/// The router with a UPnP gateway (miniupnpd): its address on the
/// internet bridge, and the public address it is told to claim (miniupnpd
/// refuses to run with a private one; nothing routes to it, the peers'
/// dial-backs find the real one).
const UPNP_ROUTER: &str = "10.78.0.14";
const UPNP_CLAIMED: &str = "11.78.0.14";
/// Bytes of each file moved.
const FILE: usize = 64 << 20;

/// The UPnP router's rules: forwarding and masquerading, with the chains
/// miniupnpd adds its mappings to.
const UPNP_RULES: &str = "table inet miniupnpd {
  chain forward { type filter hook forward priority 0; policy accept; jump miniupnpd; }
  chain miniupnpd { }
  chain prerouting { type nat hook prerouting priority -100; policy accept; jump prerouting_miniupnpd; }
  chain prerouting_miniupnpd { }
  chain postrouting { type nat hook postrouting priority 100; policy accept; jump postrouting_miniupnpd; oifname \"eth0\" masquerade; }
  chain postrouting_miniupnpd { }
  chain input { type filter hook input priority 0; policy accept; iifname \"eth0\" ct state new drop; }
}
";

/// The namespaces: the internet's switch, the public hosts, the routers and
/// the host behind each.
struct Net {
    /// The UPnP gateway, if miniupnpd is installed (killed before the
    /// namespaces go).
    upnp: Option<Upnp>,
    ns: Namespaces,
    public: Vec<String>,
    homes: Vec<String>,
}

/// The home network behind a router running miniupnpd.
struct Upnp {
    _daemon: netns::Daemon,
    router: String,
    home: String,
    nft: std::path::PathBuf,
}

impl Net {
    fn create() -> Result<Net, String> {
        let iptables = find_tool("iptables").ok_or("iptables not found")?;
        let sysctl = find_tool("sysctl").ok_or("sysctl not found")?;
        let mut ns = Namespaces::new("qpnat")?;
        let sw = ns.add("sw")?;
        ns.ip(&["-n", &sw, "link", "add", "br0", "type", "bridge"])?;
        ns.ip(&["-n", &sw, "link", "set", "br0", "up"])?;
        let plug = |ns: &mut Namespaces, name: &str, ip: &str| -> Result<String, String> {
            let host = ns.add(name)?;
            let port = format!("p-{name}");
            let cidr = format!("{ip}/24");
            ns.link((&sw, &port, None), (&host, "eth0", Some(&cidr)))?;
            ns.ip(&["-n", &sw, "link", "set", &port, "master", "br0"])?;
            Ok(host)
        };
        let mut public = Vec::new();
        for (i, ip) in PUBLIC.iter().enumerate() {
            public.push(plug(&mut ns, &format!("pub{i}"), ip)?);
        }
        let mut homes = Vec::new();
        for (name, router_ip, net, extra) in HOMES {
            let router = plug(&mut ns, &format!("r-{name}"), router_ip)?;
            let home = ns.add(name)?;
            let (gw, host) = (format!("192.168.{net}.1"), format!("192.168.{net}.2"));
            ns.link(
                (&router, "lan0", Some(&format!("{gw}/24"))),
                (&home, "eth0", Some(&format!("{host}/24"))),
            )?;
            ns.ip(&["-n", &home, "route", "add", "default", "via", &gw])?;
            ns.exec(&router, &sysctl, &["-qw", "net.ipv4.ip_forward=1"])?;
            let mut rule = vec!["-t", "nat", "-A", "POSTROUTING", "-o", "eth0"];
            rule.extend(["-j", "MASQUERADE"]);
            rule.extend(extra);
            ns.exec(&router, &iptables, &rule)?;
            // Like a home router, it answers nothing unasked on its public
            // side: such packets are dropped before the kernel tracks them
            // (a tracked one would take the port a hole punch needs).
            let quiet = ["-A", "INPUT", "-i", "eth0", "-m", "conntrack"];
            let quiet = [&quiet[..], &["--ctstate", "NEW", "-j", "DROP"]].concat();
            ns.exec(&router, &iptables, &quiet)?;
            homes.push(home);
        }
        let upnp = match (find_tool("miniupnpd"), find_tool("nft")) {
            (Some(daemon), Some(nft)) => Some(upnp_home(&mut ns, &plug, &daemon, &nft, &sysctl)?),
            _ => None,
        };
        Ok(Net {
            upnp,
            ns,
            public,
            homes,
        })
    }

    /// The port forwardings the UPnP router holds now.
    fn upnp_forwardings(&self) -> String {
        let upnp = self.upnp.as_ref().expect("a UPnP home");
        let args = ["list", "chain", "inet", "miniupnpd", "prerouting_miniupnpd"];
        let rules = self.ns.output(&upnp.router, &upnp.nft, &args);
        rules.expect("nft lists the chain")
    }

    /// Starts a node in `net_ns`, a member of the private network whose key
    /// is `work/net.key` that admits only the `allowed` ids: relays, punches
    /// and mappings all happen inside it.
    fn start(
        &self,
        (net_ns, name): (&str, &str),
        work: &Path,
        bootstrap: Option<&str>,
        allowed: &[String],
    ) -> Host {
        let data = work.join(name).display().to_string();
        let key = work.join("net.key").display().to_string();
        let listen = format!("0.0.0.0:{PORT}");
        let mut args = vec!["--listen", &listen, "--data-dir", &data, "--no-http"];
        args.extend(["--gossip-interval", "1", "--network-key", &key]);
        for id in allowed {
            args.extend(["--allow", id]);
        }
        if let Some(b) = bootstrap {
            args.extend(["--bootstrap", b]);
        }
        Host::start(
            &self.ns,
            net_ns,
            name,
            &args,
            &work.join(format!("{name}.log")),
        )
    }
}

/// Builds the home network behind a router that runs miniupnpd (UPnP IGD
/// and NAT-PMP) with its own nftables rules, and starts the daemon.
fn upnp_home(
    ns: &mut Namespaces,
    plug: &dyn Fn(&mut Namespaces, &str, &str) -> Result<String, String>,
    daemon: &Path,
    nft: &Path,
    sysctl: &Path,
) -> Result<Upnp, String> {
    let router = plug(ns, "r-upnp", UPNP_ROUTER)?;
    let home = ns.add("upnp")?;
    ns.link(
        (&router, "lan0", Some("192.168.5.1/24")),
        (&home, "eth0", Some("192.168.5.2/24")),
    )?;
    ns.ip(&["-n", &home, "route", "add", "default", "via", "192.168.5.1"])?;
    ns.exec(&router, sysctl, &["-qw", "net.ipv4.ip_forward=1"])?;
    let dir = std::env::temp_dir().join(format!("qp-upnp-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let rules = dir.join("rules.nft");
    std::fs::write(&rules, UPNP_RULES).map_err(|e| e.to_string())?;
    ns.exec(&router, nft, &["-f", &rules.display().to_string()])?;
    let conf = dir.join("miniupnpd.conf");
    let settings = [
        "ext_ifname=eth0",
        &format!("ext_ip={UPNP_CLAIMED}"),
        "listening_ip=lan0",
        "port=0",
        "enable_upnp=yes",
        "enable_natpmp=yes",
        "secure_mode=yes",
        "system_uptime=yes",
        "uuid=3d3cec3a-8cf0-11e0-98ee-001a6bd2d07b",
        "upnp_table_name=miniupnpd",
        "upnp_nat_table_name=miniupnpd",
        "upnp_forward_chain=miniupnpd",
        "upnp_nat_chain=prerouting_miniupnpd",
        "upnp_nat_postrouting_chain=postrouting_miniupnpd",
        "allow 1024-65535 192.168.5.0/24 1024-65535",
        "deny 0-65535 0.0.0.0/0 0-65535",
    ];
    std::fs::write(&conf, settings.join("\n") + "\n").map_err(|e| e.to_string())?;
    let conf_arg = conf.display().to_string();
    let log = dir.join("miniupnpd.log");
    let daemon = ns.daemon(&router, daemon, &["-f", &conf_arg, "-d"], &log);
    Ok(Upnp {
        _daemon: daemon,
        router,
        home,
        nft: nft.to_path_buf(),
    })
}

/// A peer row of `peers`: its addresses, the relays it is known through,
/// whether the connection to it is relayed.
struct Row {
    id: NodeId,
    addrs: Vec<String>,
    relays: Vec<String>,
}

/// Waits until `host`'s `peers` lists every one of `want` and `settled`
/// holds for what it lists; returns what it lists.
fn wait_for_peers(host: &mut Host, want: &[NodeId], settled: impl Fn(&[Row]) -> bool) -> Vec<Row> {
    let deadline = Instant::now() + T;
    loop {
        let rows: Vec<Row> = host
            .peers()
            .into_iter()
            .map(|(id, list)| {
                let (relays, addrs): (Vec<String>, Vec<String>) =
                    list.into_iter().partition(|a| a.starts_with("relay="));
                let relays = relays
                    .iter()
                    .map(|r| r["relay=".len()..].to_string())
                    .collect();
                Row { id, addrs, relays }
            })
            .collect();
        if want.iter().all(|w| rows.iter().any(|r| r.id == *w)) && settled(&rows) {
            return rows;
        }
        assert!(
            Instant::now() < deadline,
            "{}: peers not as expected within {T:?}",
            host.name
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Runs `put PATH 0 --public` on `host` (only it holds the file); returns the
/// file id.
fn put(host: &mut Host, path: &Path) -> String {
    host.drain();
    host.send(&format!("put {} 0 --public", path.display()));
    loop {
        let line = host.expect("put result", T, |l| {
            l.starts_with("id: ") || l.starts_with("[ERROR]")
        });
        assert!(!line.starts_with("[ERROR]"), "{}: {line}", host.name);
        if let Some(id) = line.strip_prefix("id: ") {
            return id.trim().to_string();
        }
    }
}

/// Runs `get ID OUT` on `host`, checks the bytes against `src`, and returns
/// the throughput it reported (MB/s).
fn get(host: &mut Host, id: &str, out: &Path, src: &Path) -> f64 {
    host.drain();
    host.send(&format!("get {id} {}", out.display()));
    let line = host.expect("get result", T, |l| {
        l.starts_with("[RECEIVED]") || l.starts_with("[ERROR]")
    });
    assert!(line.starts_with("[RECEIVED]"), "{}: {line}", host.name);
    assert!(
        std::fs::read(out).expect("got file") == std::fs::read(src).expect("source"),
        "{}: the file came back different",
        host.name
    );
    // "... in 0.22 s, 76.4 MB/s from 1 peer; ..."
    let rate = line
        .split(" MB/s")
        .next()
        .and_then(|head| head.rsplit(' ').next()?.parse().ok());
    rate.unwrap_or_else(|| panic!("no MB/s in {line:?}"))
}

/// How `host` is connected to `peer` now: "relayed" or "direct".
fn path_to(host: &mut Host, peer: NodeId) -> &'static str {
    let id = peer.to_string();
    let path = host
        .peer_rows()
        .into_iter()
        .find(|row| row.trim_start().starts_with(&id))
        .map(|row| match row.contains(" relayed ") {
            true => "relayed",
            false => "direct",
        });
    path.unwrap_or_else(|| panic!("{} is not connected to {peer}", host.name))
}

#[test]
fn nodes_behind_nat_are_reached_through_relays() {
    let start = Instant::now();
    let step = |what: &str| eprintln!("[nat {:5.1} s] {what}", start.elapsed().as_secs_f64());
    let net = match Net::create() {
        Ok(net) => net,
        Err(why) => return netns::skip("nat", "QUIC_PEER_REQUIRE_NAT", &why),
    };
    let work = tempfile::tempdir().expect("tempdir");
    let key = work.path().join("net.key").display().to_string();
    let made = common::binary()
        .args(["keygen", &key])
        .output()
        .expect("keygen");
    assert!(made.status.success(), "{made:?}");
    step("internet bridge, 2 public hosts, 3 home networks behind masquerading routers");

    // 1. Reachability, from dial-backs.
    // Every node's id, made before any starts: each admits only these.
    let names = ["pub0", "pub1", "cone1", "cone2", "symmetric", "upnp"];
    let allowed: Vec<String> = names
        .iter()
        .map(|name| {
            let dir = work.path().join(name).display().to_string();
            let out = common::binary().args(["id", "--data-dir", &dir]).output();
            let out = out.expect("quic-peer id");
            assert!(out.status.success(), "{out:?}");
            String::from_utf8_lossy(&out.stdout).trim().to_string()
        })
        .collect();
    let mut p0 = net.start((&net.public[0], "pub0"), work.path(), None, &allowed);
    let boot = format!("{}@{}:{PORT}", p0.id, PUBLIC[0]);
    let mut p1 = net.start((&net.public[1], "pub1"), work.path(), Some(&boot), &allowed);
    let mut homes: Vec<Host> = HOMES
        .iter()
        .zip(&net.homes)
        .map(|((name, ..), ns)| net.start((ns, name), work.path(), Some(&boot), &allowed))
        .collect();
    let mut upnp = match &net.upnp {
        Some(u) => Some(net.start((&u.home, "upnp"), work.path(), Some(&boot), &allowed)),
        None => {
            let why = "miniupnpd or nft not found";
            assert!(
                std::env::var_os("QUIC_PEER_REQUIRE_UPNP").is_none(),
                "QUIC_PEER_REQUIRE_UPNP is set, but: {why}"
            );
            eprintln!("skipping the UPnP home of the nat test: {why}");
            None
        }
    };
    for (host, ip) in [(&mut p0, PUBLIC[0]), (&mut p1, PUBLIC[1])] {
        let line = host.expect_line("[NAT] ", T);
        assert_eq!(
            line,
            format!("[NAT] reachable at {ip}:{PORT}"),
            "{}",
            host.name
        );
        assert_eq!(host.advertised(), format!("{ip}:{PORT}"));
    }
    for home in &mut homes {
        let line = home.expect_line("[NAT] ", T);
        assert!(
            line.starts_with("[NAT] behind NAT"),
            "{}: {line}",
            home.name
        );
    }
    step("public nodes reachable at their addresses, home nodes behind NAT");
    let upnp_addr = format!("{UPNP_ROUTER}:{PORT}");
    if let Some(home) = &mut upnp {
        // Behind NAT first; then the router maps the port, and peers dialing
        // it back make the node reachable at the router's address.
        let line = home.expect_line("[NAT] ", T);
        assert!(line.starts_with("[NAT] behind NAT"), "upnp: {line}");
        let line = home.expect_line("[NAT] port mapped by the router (UPnP): ", T);
        let claimed = format!("{UPNP_CLAIMED}:{PORT} to 192.168.5.2:{PORT}");
        assert!(line.ends_with(&claimed), "upnp: {line}");
        let line = home.expect_line("[NAT] reachable at ", T);
        assert_eq!(line, format!("[NAT] reachable at {upnp_addr}"));
        assert!(
            net.upnp_forwardings().contains("dnat"),
            "no forwarding on the router"
        );
        step(&format!("upnp: the router mapped port {PORT}; {line}"));
    }

    // 2. Relays: every home node is known by its relays only.
    for home in &mut homes {
        let line = home.expect_line("[RELAY] reachable through ", T);
        step(&format!("{}: {line}", home.name));
    }
    let public_addrs: Vec<String> = PUBLIC.iter().map(|ip| format!("{ip}:{PORT}")).collect();
    let home_ids: Vec<NodeId> = homes.iter().map(|h| h.id).collect();
    let upnp_id = upnp.as_ref().map(|h| h.id);
    for host in [&mut p0, &mut p1] {
        let name = host.name.clone();
        let rows = wait_for_peers(host, &home_ids, |rows| {
            rows.iter()
                .filter(|r| home_ids.contains(&r.id))
                .all(|r| !r.relays.is_empty())
        });
        for r in rows {
            if home_ids.contains(&r.id) {
                assert!(
                    r.addrs.is_empty(),
                    "{name} knows a home node by {:?}",
                    r.addrs
                );
                assert!(
                    r.relays.iter().all(|a| public_addrs.contains(a)),
                    "{name}: relays {:?}",
                    r.relays
                );
            } else if Some(r.id) != upnp_id {
                assert_eq!(r.addrs.len(), 1, "{name}: {:?}", r.addrs);
                assert!(public_addrs.contains(&r.addrs[0]), "{name}: {:?}", r.addrs);
            }
        }
    }
    step("public nodes know each home node by its relays only");
    if let Some(home) = &upnp {
        let id = home.id;
        for host in [&mut p0, &mut p1] {
            let rows = wait_for_peers(host, &[id], |rows| {
                rows.iter()
                    .any(|r| r.id == id && r.addrs == [upnp_addr.clone()])
            });
            assert!(rows.iter().any(|r| r.id == id));
        }
        step("public nodes know the UPnP home by its router's address");
    }

    // 3. Transfers, and the path each took.
    let bytes: Vec<u8> = (0..FILE as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let src = work.path().join("payload.bin");
    std::fs::write(&src, &bytes).expect("write source");
    let mut rows = Vec::new();

    // The reference: a second get between the public nodes, once their
    // connection and congestion window are warm, as a relayed or punched
    // connection's are by the time of its measured get.
    let id = put(&mut p0, &src);
    let rate = get(&mut p1, &id, &work.path().join("public.bin"), &src);
    rows.push(("public to public, first get", "direct", rate));
    let src_public = work.path().join("payload-public.bin");
    std::fs::write(&src_public, bytes.iter().map(|b| !b).collect::<Vec<u8>>()).expect("write");
    let id = put(&mut p0, &src_public);
    let rate = get(&mut p1, &id, &work.path().join("public2.bin"), &src_public);
    assert_eq!(path_to(&mut p1, p0.id), "direct");
    rows.push(("public to public", "direct", rate));

    let (sym, rest) = homes.split_last_mut().expect("three homes");
    let id = put(sym, &src);
    let rate = get(
        &mut rest[0],
        &id,
        &work.path().join("from-symmetric.bin"),
        &src,
    );
    assert_eq!(path_to(&mut rest[0], sym.id), "relayed");
    rows.push(("symmetric NAT to cone NAT", "relayed", rate));

    let [cone1, cone2] = rest else {
        panic!("two cone homes")
    };
    // The first contact goes through the relay; the two then punch a hole
    // and the direct connection replaces the relayed one.
    let id = put(cone2, &src);
    let rate = get(cone1, &id, &work.path().join("cone-to-cone.bin"), &src);
    rows.push((
        "cone NAT to cone NAT, first get",
        "relayed, then punched",
        rate,
    ));
    let deadline = Instant::now() + T;
    while path_to(cone1, cone2.id) != "direct" {
        assert!(
            Instant::now() < deadline,
            "no direct path between the cone NATs"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    step("the cone NATs punched a hole: their connection is direct");
    let src2 = work.path().join("payload2.bin");
    let mut bytes2 = bytes.clone();
    bytes2.reverse();
    std::fs::write(&src2, &bytes2).expect("write source");
    let id = put(cone2, &src2);
    let rate = get(cone1, &id, &work.path().join("cone-to-cone2.bin"), &src2);
    assert_eq!(path_to(cone1, cone2.id), "direct");
    rows.push(("cone NAT to cone NAT, after the punch", "direct", rate));

    let id = put(cone1, &src);
    let rate = get(&mut p1, &id, &work.path().join("home-to-public.bin"), &src);
    let path = path_to(&mut p1, cone1.id);
    rows.push(("cone NAT to public", path, rate));

    if let Some(home) = &mut upnp {
        let id = put(home, &src2);
        let rate = get(cone1, &id, &work.path().join("from-upnp.bin"), &src2);
        assert_eq!(path_to(cone1, home.id), "direct");
        rows.push(("UPnP-mapped home to cone NAT", "direct", rate));
        // A node that stops removes its mapping.
        home.send("exit");
        assert!(home.wait_exit(T).success());
        let deadline = Instant::now() + T;
        while net.upnp_forwardings().contains("dnat") {
            assert!(Instant::now() < deadline, "the mapping outlived the node");
            std::thread::sleep(Duration::from_millis(100));
        }
        step("the UPnP home's mapping is gone once it stopped");
    }

    eprintln!(
        "\n| {} MiB, get by id | path | MB/s | of public |",
        FILE >> 20
    );
    eprintln!("|---|---|---|---|");
    let public = rows[1].2;
    for (what, path, rate) in &rows {
        eprintln!("| {what} | {path} | {rate:.1} | {:.2} |", rate / public);
    }
    step("files moved between every kind of place");
}
