//! The `FlightService` impl: each call authenticates its caller, delegates to the file of its
//! concern (`query`, `upload`, `actions`, `ranges`), and turns a failure into a status.

use arrow_flight::flight_service_server::FlightService;
use arrow_flight::{
    Action, ActionType, Criteria, Empty, FlightData, FlightDescriptor, FlightInfo,
    HandshakeRequest, HandshakeResponse, PollInfo, PutResult, SchemaAsIpc, SchemaResult, Ticket,
};
use nearstore_proto::Plan;
use tonic::{Request, Response, Status, Streaming};

use super::{BoxStream, DeviceService, actions};
use crate::error::{Error, Result};

#[tonic::async_trait]
impl FlightService for DeviceService {
    type HandshakeStream = BoxStream<HandshakeResponse>;
    type ListFlightsStream = BoxStream<FlightInfo>;
    type DoGetStream = BoxStream<FlightData>;
    type DoPutStream = BoxStream<PutResult>;
    type DoActionStream = BoxStream<arrow_flight::Result>;
    type ListActionsStream = BoxStream<ActionType>;
    type DoExchangeStream = BoxStream<FlightData>;

    async fn handshake(
        &self,
        _request: Request<Streaming<HandshakeRequest>>,
    ) -> std::result::Result<Response<Self::HandshakeStream>, Status> {
        Err(Status::unimplemented(
            "handshake is not used: send requests directly",
        ))
    }

    async fn list_flights(
        &self,
        request: Request<Criteria>,
    ) -> std::result::Result<Response<Self::ListFlightsStream>, Status> {
        let who = self.authenticate(request.metadata())?;
        let mut infos = Vec::new();
        for stored in self.storage().table_names() {
            if let Some(name) = who.unscope(&stored) {
                match self.table_info(&who, name).await {
                    Ok(info) => infos.push(Ok(info)),
                    // Dropped since the names were read: gone, not an error.
                    Err(Error::UnknownTable(_)) => {}
                    Err(e) => infos.push(Err(self.fail_for(&who, e))),
                }
            }
        }
        Ok(Response::new(Box::pin(futures::stream::iter(infos))))
    }

    async fn get_flight_info(
        &self,
        request: Request<FlightDescriptor>,
    ) -> std::result::Result<Response<FlightInfo>, Status> {
        let who = self.authenticate(request.metadata())?;
        self.flight_info(&who, request.into_inner())
            .await
            .map(Response::new)
            .map_err(|e| self.fail_for(&who, e))
    }

    async fn poll_flight_info(
        &self,
        _request: Request<FlightDescriptor>,
    ) -> std::result::Result<Response<PollInfo>, Status> {
        Err(Status::unimplemented(
            "queries are not long-running: use GetFlightInfo",
        ))
    }

    async fn get_schema(
        &self,
        request: Request<FlightDescriptor>,
    ) -> std::result::Result<Response<SchemaResult>, Status> {
        let who = self.authenticate(request.metadata())?;
        let r: Result<SchemaResult> = async {
            let plan = self.plan_of(&request.into_inner())?;
            let q = self.executor.prepare(&Self::scoped(&who, &plan)?).await?;
            let opts = arrow::ipc::writer::IpcWriteOptions::default();
            Ok(SchemaAsIpc::new(&q.schema(), &opts).try_into()?)
        }
        .await;
        r.map(Response::new).map_err(|e| self.fail_for(&who, e))
    }

    async fn do_get(
        &self,
        request: Request<Ticket>,
    ) -> std::result::Result<Response<Self::DoGetStream>, Status> {
        let received = std::time::Instant::now();
        let who = self.authenticate(request.metadata())?;
        let r = async {
            let plan = Plan::from_json(&request.into_inner().ticket)?;
            self.run_query(&who, Self::scoped(&who, &plan)?, received)
                .await
        }
        .await;
        r.map(Response::new).map_err(|e| self.fail_for(&who, e))
    }

    async fn do_put(
        &self,
        request: Request<Streaming<FlightData>>,
    ) -> std::result::Result<Response<Self::DoPutStream>, Status> {
        let who = self.authenticate(request.metadata())?;
        let summary = self
            .put(&who, request.into_inner())
            .await
            .map_err(|e| self.fail_for(&who, e))?;
        let meta = serde_json::to_vec(&summary).expect("summary serialises");
        let result = PutResult {
            app_metadata: meta.into(),
        };
        Ok(Response::new(Box::pin(futures::stream::iter([Ok(result)]))))
    }

    async fn do_action(
        &self,
        request: Request<Action>,
    ) -> std::result::Result<Response<Self::DoActionStream>, Status> {
        let who = self.authenticate(request.metadata())?;
        let action = request.into_inner();
        if action.r#type == nearstore_proto::actions::READ_RANGES {
            // Streamed through the link rather than collected: the bytes are the answer.
            return self
                .read_ranges(&who, &action.body)
                .await
                .map(Response::new)
                .map_err(|e| self.fail_for(&who, e));
        }
        let bodies = self
            .action(&who, action)
            .await
            .map_err(|e| self.fail_for(&who, e))?;
        let results = bodies
            .into_iter()
            .map(|body| Ok(arrow_flight::Result { body }))
            .collect::<Vec<_>>();
        Ok(Response::new(Box::pin(futures::stream::iter(results))))
    }

    async fn list_actions(
        &self,
        request: Request<Empty>,
    ) -> std::result::Result<Response<Self::ListActionsStream>, Status> {
        self.authenticate(request.metadata())?;
        let items = actions::action_types()
            .into_iter()
            .map(Ok)
            .collect::<Vec<_>>();
        Ok(Response::new(Box::pin(futures::stream::iter(items))))
    }

    async fn do_exchange(
        &self,
        _request: Request<Streaming<FlightData>>,
    ) -> std::result::Result<Response<Self::DoExchangeStream>, Status> {
        Err(Status::unimplemented(
            "DoExchange is not offered: use DoGet with a plan",
        ))
    }
}
