//! The in-memory log source passes the log source conformance suite.

use async_trait::async_trait;
use deploykit_core::Result;
use deploykit_logs::{LogSource, Stream};
use deploykit_testing::conformance::log_source::{LogWorld, log_source};
use deploykit_testing::{SIM_ENVIRONMENT, SimCluster};

struct Sim(SimCluster);

#[async_trait]
impl LogWorld for Sim {
    fn source(&self) -> &dyn LogSource {
        &self.0
    }

    fn environment(&self) -> &str {
        SIM_ENVIRONMENT
    }

    async fn write(
        &self,
        service: &str,
        revision: &str,
        instance: &str,
        lines: &[String],
    ) -> Result<()> {
        self.0.instance_logs().write(
            service,
            revision,
            instance,
            Stream::Stdout,
            lines.iter().cloned(),
        );
        // Time moves on between writes, as it does for real instances.
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn the_simulated_cluster_is_a_conforming_log_source() {
    log_source(&Sim(SimCluster::new())).await;
}
