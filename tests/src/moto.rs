//! A real AWS API emulator on loopback: moto server, and the fleet fixture script that creates a
//! VPC, subnets, a target group, a launch configuration and an ASG through the AWS API.

use std::{
    net::{SocketAddr, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

#[derive(Debug)]
pub struct Moto {
    child: Child,
    pub addr: SocketAddr,
}

#[derive(Debug, Clone)]
pub struct FleetFixture {
    pub asg: String,
    pub target_group: String,
    /// (instance id, availability zone)
    pub instances: Vec<(String, String)>,
}

impl Moto {
    /// Starts `python3 -m moto.server` on a free loopback port (install with `scripts/setup.sh`).
    pub fn start() -> Self {
        let port = crate::free_port();
        let child = Command::new("python3")
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 -m moto.server (run scripts/setup.sh to install moto[server])");
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "moto server did not start on {addr}: is moto[server] installed (scripts/setup.sh)?"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Self { child, addr }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Creates an ASG named `name` with `size` instances registered in one target group.
    pub fn fleet(&self, name: &str, size: usize) -> FleetFixture {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/moto_fleet.py");
        let out = Command::new("python3")
            .arg(script)
            .args([
                "--endpoint",
                &self.endpoint(),
                "--name",
                name,
                "--size",
                &size.to_string(),
            ])
            .output()
            .expect("run moto_fleet.py");
        assert!(
            out.status.success(),
            "fixture failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("fixture json");
        FleetFixture {
            asg: json["asg"].as_str().expect("asg").to_owned(),
            target_group: json["target_group"].as_str().expect("tg").to_owned(),
            instances: json["instances"]
                .as_array()
                .expect("instances")
                .iter()
                .map(|i| {
                    (
                        i["instance_id"].as_str().expect("id").to_owned(),
                        i["availability_zone"].as_str().expect("az").to_owned(),
                    )
                })
                .collect(),
        }
    }
}

impl Moto {
    /// What moto holds now for `fleet`: `{"targets": [{id, state}], "instances": [{id, health,
    /// lifecycle}], "commands": [{document, instances, parameters, comment}]}`.
    pub fn query(&self, fleet: &FleetFixture) -> serde_json::Value {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/moto_query.py");
        let out = Command::new("python3")
            .arg(script)
            .args([
                "--endpoint",
                &self.endpoint(),
                "--target-group",
                &fleet.target_group,
                "--asg",
                &fleet.asg,
            ])
            .output()
            .expect("run moto_query.py");
        assert!(
            out.status.success(),
            "query failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("query json")
    }
}

impl Moto {
    /// Creates the coordinator's state table (pk/sk, on demand, TTL on `expires_at`).
    pub fn state_table(&self, table: &str) {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/moto_table.py");
        let out = Command::new("python3")
            .arg(script)
            .args(["--endpoint", &self.endpoint(), "--table", table])
            .output()
            .expect("run moto_table.py");
        assert!(
            out.status.success(),
            "table fixture failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
