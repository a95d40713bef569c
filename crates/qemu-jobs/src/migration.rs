//! [`Migration`]: QEMU's outgoing migration, followed from its events.

use std::time::{Duration, Instant};

use qemu_qapi::typed::{TypedClient, TypedListener};
use qemu_qapi_types::{
    Event, Migrate, MigrateCancel, MigrateSetCapabilities, MigrationCapability,
    MigrationCapabilityStatus, MigrationInfo, MigrationStatus, QueryMigrate,
    QueryMigrateCapabilities,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::job::clamp;
use crate::progress::{Estimator, Progress};
use crate::{JobError, Outcome};

/// The name [`JobError::Timeout`] gives a migration.
const ID: &str = "migration";

/// How a [`Migration`] is followed.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct MigrationOptions {
    /// How often progress is read (`query-migrate`) while the migration
    /// runs: QEMU sends no progress events. The status is followed from
    /// `MIGRATION` events whatever this is (and from these readings when
    /// QEMU sends none). Default 250 ms.
    pub poll_interval: Duration,
    /// Turn on the `events` migration capability before `migrate` if it is
    /// off: without it QEMU (7.2 and 10.0 alike) sends neither `MIGRATION`
    /// nor `MIGRATION_PASS`, and the status is only seen at each reading.
    /// It is left on. Default on.
    pub enable_events: bool,
}

impl Default for MigrationOptions {
    fn default() -> Self {
        MigrationOptions {
            poll_interval: Duration::from_millis(250),
            enable_events: true,
        }
    }
}

impl MigrationOptions {
    /// The defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets [`MigrationOptions::poll_interval`].
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// Sets [`MigrationOptions::enable_events`].
    pub fn enable_events(mut self, yes: bool) -> Self {
        self.enable_events = yes;
        self
    }
}

/// What [`Migration::start`] sends: a URI (`"tcp:host:port"`,
/// `"unix:/path"`, `"exec:cmd"`, `"fd:name"`, `"file:/path"` since QEMU 8.2)
/// or a whole [`Migrate`] command (10.0's `channels`, `resume`, ...).
pub trait IntoMigrate {
    /// The command.
    fn into_migrate(self) -> Migrate;
}

impl IntoMigrate for Migrate {
    fn into_migrate(self) -> Migrate {
        self
    }
}

impl IntoMigrate for &str {
    fn into_migrate(self) -> Migrate {
        Migrate::new().uri(self)
    }
}

impl IntoMigrate for String {
    fn into_migrate(self) -> Migrate {
        Migrate::new().uri(self)
    }
}

impl IntoMigrate for &String {
    fn into_migrate(self) -> Migrate {
        Migrate::new().uri(self.as_str())
    }
}

/// What is known of a migration at one moment.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct MigrationState {
    /// Where it is (setup, active, device, postcopy-active, completed,
    /// ...); `MigrationStatus::None` before its first event or reading.
    pub status: MigrationStatus,
    /// Bytes of RAM sent so far (`ram.transferred`).
    pub transferred: u64,
    /// Bytes of RAM still to send in this pass (`ram.remaining`); it grows
    /// again when a pass ends with pages dirtied meanwhile.
    pub remaining: u64,
    /// The guest RAM being migrated, in bytes (`ram.total`); 0 until QEMU
    /// reports it (not in `setup`).
    pub ram_total: u64,
    /// Passes over the RAM so far: `MIGRATION_PASS`, or `ram.dirty-sync-count`.
    pub passes: u64,
    /// `progress.current` is [`MigrationState::transferred`], `progress.total`
    /// that plus [`MigrationState::remaining`]: the rate is bytes sent per
    /// second, the time left is what remains at that rate (pages QEMU
    /// finds to be zero cost almost nothing to send, so it errs long).
    pub progress: Progress,
    /// QEMU's estimate of the downtime to come (`expected-downtime`), while
    /// it runs.
    pub expected_downtime: Option<Duration>,
    /// The downtime there was (`downtime`), once completed.
    pub downtime: Option<Duration>,
    /// Time spent in `setup` (`setup-time`).
    pub setup_time: Option<Duration>,
    /// Time since it started (`total-time`), or its duration once completed.
    pub total_time: Option<Duration>,
    /// How it ended, once it has.
    pub outcome: Option<Outcome>,
    /// Why it can no longer be followed (the connection ended), if so.
    pub lost: Option<String>,
}

impl MigrationState {
    fn new() -> MigrationState {
        MigrationState {
            status: MigrationStatus::None,
            transferred: 0,
            remaining: 0,
            ram_total: 0,
            passes: 0,
            progress: Progress {
                current: 0,
                total: 0,
                rate: None,
                eta: None,
            },
            expected_downtime: None,
            downtime: None,
            setup_time: None,
            total_time: None,
            outcome: None,
            lost: None,
        }
    }

    /// Takes in a `query-migrate` reading (all but the status).
    fn read(&mut self, info: &MigrationInfo, estimator: &mut Estimator) {
        let ms = |v: Option<i128>| v.map(|v| Duration::from_millis(clamp(v)));
        if let Some(ram) = &info.ram {
            self.transferred = clamp(ram.transferred);
            self.remaining = clamp(ram.remaining);
            self.ram_total = clamp(ram.total);
            self.passes = self.passes.max(clamp(ram.dirty_sync_count));
            self.progress = estimator.update(
                Instant::now(),
                self.transferred,
                self.transferred.saturating_add(self.remaining),
            );
        }
        if info.expected_downtime.is_some() {
            self.expected_downtime = ms(info.expected_downtime);
        }
        if info.downtime.is_some() {
            self.downtime = ms(info.downtime);
        }
        if info.setup_time.is_some() {
            self.setup_time = ms(info.setup_time);
        }
        if info.total_time.is_some() {
            self.total_time = ms(info.total_time);
        }
    }
}

/// QEMU's outgoing migration (to another QEMU, a file, a command), followed
/// from its events: its status, its progress, and how it ends.
///
/// QEMU runs one outgoing migration at a time, so there is no id. A task
/// follows it for as long as the handle lives (it stops when the migration
/// has ended or the handle is dropped; dropping the handle does not cancel
/// the migration). Nothing here sleeps to wait for a state: the status comes
/// from `MIGRATION` events; only progress, which QEMU does not announce, is
/// read with `query-migrate` at [`MigrationOptions::poll_interval`], and
/// that reading also catches a status whose event was missed (or never
/// sent, the `events` capability being off).
pub struct Migration {
    qmp: TypedClient,
    state: watch::Receiver<MigrationState>,
    task: JoinHandle<()>,
}

impl Drop for Migration {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl std::fmt::Debug for Migration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Migration")
            .field("state", &*self.state.borrow())
            .finish()
    }
}

impl Migration {
    /// Starts a migration with `migrate` (a URI or a [`Migrate`]) and
    /// follows it. With [`MigrationOptions::enable_events`] (the default)
    /// the `events` capability is turned on first if it is off; the events
    /// are listened to before `migrate` is sent, so none is missed. QEMU
    /// refusing the command (a migration already running, a URI it does not
    /// know: 7.2 has no `file:`) is [`JobError::Call`].
    pub async fn start(
        qmp: &TypedClient,
        migrate: impl IntoMigrate,
        options: MigrationOptions,
    ) -> Result<Migration, JobError> {
        let command = migrate.into_migrate();
        if options.enable_events {
            let capabilities = qmp.call(QueryMigrateCapabilities::new()).await?;
            let on = capabilities
                .iter()
                .any(|c| c.capability == MigrationCapability::Events && c.state);
            if !on {
                let events = MigrationCapabilityStatus::new(MigrationCapability::Events, true);
                qmp.call(MigrateSetCapabilities::new(vec![events])).await?;
            }
        }
        let listener = qmp.listen::<Event>();
        qmp.call(command).await?;
        Ok(Migration::follow(qmp.clone(), options, listener, None))
    }

    /// Follows the migration that is already running (started by anyone),
    /// or reports how the last one ended if it has. With the `events`
    /// capability off (it cannot be turned on while a migration runs), the
    /// status is seen at each reading only. [`JobError::NoMigration`] if
    /// QEMU has had none.
    pub async fn attach(
        qmp: &TypedClient,
        options: MigrationOptions,
    ) -> Result<Migration, JobError> {
        let listener = qmp.listen::<Event>();
        let info = qmp.call(QueryMigrate::new()).await?;
        match info.status {
            None | Some(MigrationStatus::None) => Err(JobError::NoMigration),
            Some(_) => Ok(Migration::follow(
                qmp.clone(),
                options,
                listener,
                Some(info),
            )),
        }
    }

    fn follow(
        qmp: TypedClient,
        options: MigrationOptions,
        listener: TypedListener<Event>,
        info: Option<MigrationInfo>,
    ) -> Migration {
        let mut estimator = Estimator::new();
        let mut initial = MigrationState::new();
        if let Some(i) = &info {
            initial.read(i, &mut estimator);
        }
        let (tx, rx) = watch::channel(initial);
        let follower = Follower {
            qmp: qmp.clone(),
            options,
            tx,
            estimator,
        };
        let status = info.and_then(|i| i.status);
        let task = tokio::spawn(follower.run(listener, status));
        Migration {
            qmp,
            state: rx,
            task,
        }
    }

    /// What is known now.
    pub fn state(&self) -> MigrationState {
        self.state.borrow().clone()
    }

    /// A receiver of every change of state (status, progress, outcome).
    pub fn watch(&self) -> watch::Receiver<MigrationState> {
        self.state.clone()
    }

    /// Waits until the migration has ended and returns how; at most
    /// `deadline` (`None`: no limit), after which [`JobError::Timeout`] (the
    /// migration goes on). The connection ending first (QEMU dying) is
    /// [`JobError::Lost`].
    pub async fn wait(&self, deadline: Option<Duration>) -> Result<Outcome, JobError> {
        let state = self
            .wait_until(deadline, |s| s.outcome.is_some() || s.lost.is_some())
            .await?;
        crate::waiting::ended(state.outcome, state.lost)
    }

    /// Waits until the migration reaches `status` (`Active`,
    /// `PostcopyActive`, `PreSwitchover`, ...), or has ended
    /// ([`JobError::MigrationEnded`]), or is lost.
    pub async fn wait_for(
        &self,
        status: MigrationStatus,
        deadline: Option<Duration>,
    ) -> Result<MigrationState, JobError> {
        let state = self
            .wait_until(deadline, |s| {
                s.status == status || s.outcome.is_some() || s.lost.is_some()
            })
            .await?;
        if state.status == status {
            Ok(state)
        } else if let Some(why) = state.lost.clone() {
            Err(JobError::Lost(why))
        } else {
            Err(JobError::MigrationEnded {
                outcome: state.outcome.clone().unwrap_or(Outcome::Completed),
                wanted: status,
            })
        }
    }

    async fn wait_until(
        &self,
        deadline: Option<Duration>,
        done: impl Fn(&MigrationState) -> bool,
    ) -> Result<MigrationState, JobError> {
        crate::waiting::wait_until(&self.state, ID, "migration", deadline, done).await
    }

    /// `migrate_cancel`; [`Migration::wait`] then says
    /// [`Outcome::Cancelled`] (or how the migration ended if it raced the
    /// cancel and won).
    pub async fn cancel(&self) -> Result<(), JobError> {
        self.qmp.call(MigrateCancel::new()).await?;
        Ok(())
    }
}

/// True for the statuses a migration does not leave.
fn is_final(status: &MigrationStatus) -> bool {
    matches!(
        status,
        MigrationStatus::Completed | MigrationStatus::Failed | MigrationStatus::Cancelled
    )
}

/// The task that follows the migration.
struct Follower {
    qmp: TypedClient,
    options: MigrationOptions,
    tx: watch::Sender<MigrationState>,
    estimator: Estimator,
}

impl Follower {
    async fn run(mut self, mut listener: TypedListener<Event>, status: Option<MigrationStatus>) {
        let mut tick = tokio::time::interval(self.options.poll_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // A status known at attach time may be the end already.
        if let Some(status) = status {
            if self.on_status(status).await {
                return;
            }
        }
        loop {
            tokio::select! {
                event = listener.recv() => match event {
                    Ok(Event::Migration(e)) => {
                        if self.on_status(e.status).await {
                            return;
                        }
                    }
                    Ok(Event::MigrationPass(e)) => {
                        let pass = clamp(e.pass);
                        self.tx.send_if_modified(|s| {
                            let more = pass > s.passes;
                            s.passes = s.passes.max(pass);
                            more
                        });
                    }
                    Ok(_) => {}
                    Err(e) if e.is_disconnected() => {
                        self.lost(&e);
                        return;
                    }
                    // Lagged, or an event whose data did not decode: read the
                    // migration's state instead of trusting what was missed.
                    Err(e) => {
                        tracing::debug!("migration: resynchronising after: {e}");
                        if self.poll().await {
                            return;
                        }
                    }
                },
                _ = tick.tick() => {
                    if self.poll().await {
                        return;
                    }
                }
            }
        }
    }

    fn lost(&self, e: &dyn std::fmt::Display) {
        self.tx
            .send_modify(|s| s.lost = Some(format!("the connection ended: {e}")));
    }

    /// Reacts to a new status; true when following is over.
    async fn on_status(&mut self, status: MigrationStatus) -> bool {
        if !is_final(&status) {
            self.tx.send_if_modified(|s| {
                let changed = s.status != status;
                s.status = status;
                changed
            });
            return false;
        }
        // The last reading: the final numbers, and QEMU's own words on a
        // failure. `query-migrate` keeps them until the next migration.
        let info = match self.qmp.call(QueryMigrate::new()).await {
            Ok(info) => Some(info),
            Err(e) if e.is_disconnected() => {
                self.lost(&e);
                return true;
            }
            Err(e) => {
                tracing::debug!("query-migrate: {e}");
                None
            }
        };
        let outcome = match status {
            MigrationStatus::Completed => Outcome::Completed,
            MigrationStatus::Cancelled => Outcome::Cancelled,
            _ => Outcome::Failed {
                error: info
                    .as_ref()
                    .and_then(|i| i.error_desc.clone())
                    .unwrap_or_else(|| "migration failed (QEMU gave no reason)".into()),
            },
        };
        let estimator = &mut self.estimator;
        self.tx.send_modify(|s| {
            if let Some(i) = &info {
                s.read(i, estimator);
            }
            s.status = status;
            s.outcome = Some(outcome);
        });
        true
    }

    /// Reads progress (and the status, in case an event was missed or not
    /// sent); true when following is over.
    async fn poll(&mut self) -> bool {
        match self.qmp.call(QueryMigrate::new()).await {
            Ok(info) => {
                let estimator = &mut self.estimator;
                self.tx.send_modify(|s| s.read(&info, estimator));
                match info.status {
                    Some(status)
                        if status != MigrationStatus::None && status != self.tx.borrow().status =>
                    {
                        self.on_status(status).await
                    }
                    _ => false,
                }
            }
            Err(e) if e.is_disconnected() => {
                self.lost(&e);
                true
            }
            Err(e) => {
                tracing::debug!("query-migrate: {e}");
                false
            }
        }
    }
}
